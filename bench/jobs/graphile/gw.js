// The Graphile Worker side of the jobs benchmark, measured like bench/jobs/driver.c:
// 2 worker processes x 10 concurrent jobs, batched (localQueue + batched completion) or
// unbatched. `node gw.js URL throughput N batched|unbatched` and
// `node gw.js URL latency M batched|unbatched` print "key value" lines.
"use strict";
const { fork } = require("child_process");
const { run, runMigrations } = require("graphile-worker");
const { Pool } = require("pg");

// Quiet: the benchmark prints only its numbers.
const logger = new (require("graphile-worker").Logger)(() => () => {});

const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

async function worker(url, batched) {
  const preset = batched
    ? { worker: { localQueue: { size: 11 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } }
    : {};
  const runner = await run({
    connectionString: url,
    concurrency: 10,
    pollInterval: 1000,
    noHandleSignals: true,
    logger,
    preset,
    taskList: {
      noop: async () => {},
      stamp: async (payload, helpers) => {
        const start = nowUs();
        await helpers.query("INSERT INTO bench_lat (t0_us, start_us) VALUES ($1, $2)", [
          payload.t0,
          start,
        ]);
      },
    },
  });
  process.on("SIGTERM", () => runner.stop().then(() => process.exit(0)));
  process.send("ready");
  await runner.promise;
}

async function driver(url, mode, n, batched) {
  const pool = new Pool({ connectionString: url, max: 1 });
  await runMigrations({ connectionString: url, logger });
  await pool.query("CREATE EXTENSION IF NOT EXISTS pgstattuple").catch(() => {});
  await pool.query("CREATE TABLE IF NOT EXISTS bench_lat (t0_us bigint, start_us bigint)");
  await pool.query("TRUNCATE graphile_worker._private_jobs CASCADE; TRUNCATE bench_lat");
  const kids = [0, 1].map(() => fork(__filename, ["worker", url, batched ? "batched" : "unbatched"]));
  await Promise.all(kids.map((k) => new Promise((res) => k.once("message", res))));
  await new Promise((r) => setTimeout(r, 500));
  const empty = async () =>
    (await pool.query("SELECT NOT EXISTS (SELECT 1 FROM graphile_worker._private_jobs) AS e"))
      .rows[0].e;
  const waitEmpty = async () => {
    while (!(await empty())) await new Promise((r) => setTimeout(r, 10));
  };
  const dead = async () => {
    try {
      return (await pool.query(
        "SELECT dead_tuple_count FROM pgstattuple('graphile_worker._private_jobs')")).rows[0]
        .dead_tuple_count;
    } catch (e) {
      return -1;
    }
  };
  if (mode === "throughput") {
    await pool.query("BEGIN");
    const t0 = nowUs();
    await pool.query(
      "SELECT count(*) FROM graphile_worker.add_jobs(ARRAY(SELECT ROW('noop', '{}'::json," +
        " NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec" +
        " FROM generate_series(1, $1)))",
      [n]
    );
    const t1 = nowUs();
    await pool.query("COMMIT");
    const start = nowUs();
    await waitEmpty();
    const end = nowUs();
    console.log(`enqueue_s ${((t1 - t0) / 1e6).toFixed(3)}`);
    console.log(`drain_s ${((end - start) / 1e6).toFixed(3)}`);
    console.log(`jobs_per_s ${Math.round(n / ((end - start) / 1e6))}`);
    console.log(`dead_rows_at_end ${await dead()}`);
    await new Promise((r) => setTimeout(r, 15000));
    console.log(`dead_rows_after_15s ${await dead()}`);
  } else {
    for (let i = 0; i < n; i++) {
      await pool.query("SELECT graphile_worker.add_job('stamp', json_build_object('t0', $1::bigint))", [
        nowUs(),
      ]);
      await new Promise((r) => setTimeout(r, 5));
    }
    await waitEmpty();
    const q = async (p) =>
      (await pool.query(
        `SELECT percentile_cont(${p}) WITHIN GROUP (ORDER BY start_us - t0_us) AS v FROM bench_lat`
      )).rows[0].v / 1000;
    console.log(`latency_p50_ms ${(await q(0.5)).toFixed(3)}`);
    console.log(`latency_p99_ms ${(await q(0.99)).toFixed(3)}`);
    console.log(`latency_jobs ${(await pool.query("SELECT count(*) AS c FROM bench_lat")).rows[0].c}`);
  }
  for (const k of kids) k.kill("SIGTERM");
  await Promise.all(kids.map((k) => new Promise((res) => k.once("exit", res))));
  await pool.end();
}

const args = process.argv.slice(2);
if (args[0] === "worker") {
  // node gw.js worker URL batched|unbatched (forked by the driver)
  worker(args[1], args[2] === "batched").catch((e) => {
    console.error(e);
    process.exit(1);
  });
} else {
  // node gw.js URL MODE N batched|unbatched
  driver(args[0], args[1], Number(args[2]), args[3] === "batched").catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
