// The peer of bench/http: what users run today. A Node.js cluster of WORKERS processes,
// each with Express and its own pg pool (max 10, as pgcorral's default), serving the same
// routes as pgcorral: GET /api/v1/ping, GET /api/v1/health (SELECT 1 through the pool) and
// GET /api/v1/accounts/:id (examples/accounts.c: one uncached point read, 404 when absent).
// Environment: PORT, WORKERS (default 2), DATABASE_URL (or PGHOST/PGPORT/PGUSER/...).
'use strict';
const cluster = require('node:cluster');

const workers = parseInt(process.env.WORKERS || '2', 10);
const port = parseInt(process.env.PORT || '3100', 10);

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('exit', (w, code) => {
    if (!process.exitCode) console.error(`worker ${w.process.pid} exited ${code}`);
  });
  const stop = () => {
    process.exitCode = 0;
    for (const id in cluster.workers) cluster.workers[id].kill('SIGTERM');
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const express = require('express');
  const { Pool } = require('pg');
  const pool = new Pool({
    connectionString: process.env.DATABASE_URL,
    max: 10,
    idleTimeoutMillis: 300000,
    connectionTimeoutMillis: 5000,
  });
  const app = express();
  app.get('/api/v1/ping', (req, res) => res.json({ status: 'ok' }));
  app.get('/api/v1/health', async (req, res) => {
    try {
      await pool.query('SELECT 1');
      res.json({ status: 'ok', database: 'healthy' });
    } catch (e) {
      res.status(503).set('Retry-After', '5').json({ status: 'error', database: 'unreachable' });
    }
  });
  app.get('/api/v1/accounts/:id', async (req, res) => {
    const id = req.params.id;
    if (!/^[0-9]{1,10}$/.test(id)) return res.status(400).json({ error: 'the account id must be a number' });
    try {
      const r = await pool.query({ name: 'balance', text: 'SELECT abalance FROM pgbench_accounts WHERE aid = $1', values: [id] });
      if (r.rows.length === 0) return res.status(404).json({ error: 'account not found' });
      res.json({ aid: Number(id), abalance: r.rows[0].abalance });
    } catch (e) {
      if (e.code === '22003') return res.status(404).json({ error: 'account not found' });
      res.status(500).json({ error: e.message });
    }
  });
  const server = app.listen(port, '127.0.0.1', () => console.log(`node worker ${process.pid} on ${port}`));
  process.on('SIGTERM', () => server.close(() => pool.end().then(() => process.exit(0))));
}
