/*
 * `make install` into a temporary DESTDIR, then used as a user would: the installed binary
 * runs, a plugin builds against the installed header with nothing but `pkg-config --cflags
 * pgcorral` and serves its route from the installed binary, the man page renders without
 * a warning, the systemd units pass `systemd-analyze verify`, and `make uninstall` leaves
 * no file behind.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/rt_version.h"
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

#define PREFIX "/usr/local"

/* A plugin as its author would write it: the header from the include path, no pgcorral
 * source tree anywhere near. */
static const char plugin_src[] =
    "#include <pgcorral.h>\n"
    "\n"
    "static int hello(struct pgc_ctx *ctx, const struct pgc_request *req,\n"
    "                 struct pgc_response *res)\n"
    "{\n"
    "    (void)ctx;\n"
    "    (void)req;\n"
    "    return pgc_res_json(res, 200, \"{\\\"hello\\\":\\\"from an installed plugin\\\"}\");\n"
    "}\n"
    "\n"
    "static int noop(struct pgc_ctx *ctx, const struct pgc_job *job)\n"
    "{\n"
    "    (void)ctx;\n"
    "    (void)job;\n"
    "    return 0;\n"
    "}\n"
    "\n"
    "int pgc_plugin_init(struct pgc_registry *reg)\n"
    "{\n"
    "    int rc = pgc_register_route(reg, \"GET\", \"/api/v1/hello\", hello, 0);\n"
    "    return rc ? rc : pgc_register_task(reg, \"installed.noop\", noop, 0);\n"
    "}\n";

/* The files `make install` puts under DESTDIR, relative to it. */
static const char *const installed[] = {
    PREFIX "/bin/pgcorral",
    PREFIX "/include/pgcorral.h",
    PREFIX "/lib/pkgconfig/pgcorral.pc",
    PREFIX "/share/man/man1/pgcorral.1",
    PREFIX "/share/doc/pgcorral/pgcorral.service",
    PREFIX "/share/doc/pgcorral/pgcorral.socket",
    PREFIX "/share/doc/pgcorral/pgcorral.logrotate",
};
#define NINSTALLED (sizeof installed / sizeof installed[0])

static char destdir[128], root[PATH_MAX], build[64];

/* `make -C ROOT TARGET PREFIX=/usr/local DESTDIR=... BUILD=...`, outside any outer make's
 * flags (make test runs us). Returns the exit code; o holds the output. */
static int make(const char *target, struct ot_output *o)
{
    char d[200], b[100];
    snprintf(d, sizeof d, "DESTDIR=%s", destdir);
    snprintf(b, sizeof b, "BUILD=%s", build);
    char *argv[] = {"/usr/bin/env",
                    "-u",
                    "MAKEFLAGS",
                    "-u",
                    "MFLAGS",
                    "-u",
                    "MAKELEVEL",
                    "make",
                    "--no-print-directory",
                    "-C",
                    root,
                    (char *)target,
                    "PREFIX=" PREFIX,
                    d,
                    b,
                    NULL};
    return ot_run(argv, NULL, 300000, o);
}

/* Runs sh -c script with env added. Returns the exit code; o holds the output. */
static int sh(const char *script, char *const env[], struct ot_output *o)
{
    char *argv[] = {"/bin/sh", "-c", (char *)script, NULL};
    return ot_run(argv, env, 120000, o);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) == EOF || fclose(f) != 0)
        bail("cannot write %s: %s", path, strerror(errno));
}

/* Whether path exists under destdir. */
static bool dest_exists(const char *rel)
{
    char path[512];
    snprintf(path, sizeof path, "%s%s", destdir, rel);
    return access(path, F_OK) == 0;
}

static const char *sup_control;
static bool sup_ready(void *arg)
{
    pgt_proc_drain(arg);
    return ot_all_ready(sup_control, 1, 0);
}

int main(void)
{
    char path[512], script[2048], env_pc_path[300], env_sysroot[200], env_url[1024];
    struct ot_output o;
    struct pgt_proc sup;
    int missing = 0;

    tap_timeout(300);
    /* The checkout: build/tests/t408_install -> build/pgcorral -> the repository. */
    snprintf(path, sizeof path, "%s", pgt_binary());
    snprintf(build, sizeof build, "%s", basename(dirname(path)));
    snprintf(path, sizeof path, "%s", pgt_binary());
    snprintf(root, sizeof root, "%s", dirname(dirname(path)));
    /* World-readable, in /tmp: nothing in it depends on the checkout's (maybe 0700) home. */
    snprintf(destdir, sizeof destdir, "%s", pgt_tmp_path("destdir"));
    snprintf(script, sizeof script, "rm -rf '%s' && mkdir -m 755 '%s'", destdir, destdir);
    if (sh(script, NULL, &o) != 0)
        bail("cannot create %s: %s", destdir, o.err);
    ot_output_free(&o);
    plan(14);

    int rc = make("install", &o);
    if (!ok(rc == 0, "make install PREFIX=" PREFIX " DESTDIR=%s", destdir))
        diag("%s%s", o.out, o.err);
    ot_output_free(&o);
    for (size_t i = 0; i < NINSTALLED; i++)
        if (!dest_exists(installed[i])) {
            diag("missing: %s", installed[i]);
            missing++;
        }
    is_int(missing, 0, "it installs the binary, header, .pc, man page, units and logrotate file");

    /* The installed binary runs. */
    snprintf(path, sizeof path, "%s" PREFIX "/bin/pgcorral", destdir);
    char *version_argv[] = {path, "--version", NULL};
    ot_run(version_argv, NULL, 10000, &o);
    ok(o.code == 0 &&
           strncmp(o.out, "pgcorral " PGCORRAL_VERSION " ", 10 + strlen(PGCORRAL_VERSION)) == 0,
       "the installed binary prints its version: %.60s", o.out);
    ot_output_free(&o);

    /* pkg-config finds it, with the version of runtime/rt_version.h and the -I path. */
    snprintf(env_pc_path, sizeof env_pc_path, "PKG_CONFIG_PATH=%s" PREFIX "/lib/pkgconfig",
             destdir);
    snprintf(env_sysroot, sizeof env_sysroot, "PKG_CONFIG_SYSROOT_DIR=%s", destdir);
    char *pc_env[] = {env_pc_path, env_sysroot, "PKG_CONFIG_LIBDIR=/nonexistent", NULL};
    sh("pkg-config --modversion pgcorral && pkg-config --cflags pgcorral", pc_env, &o);
    snprintf(script, sizeof script, "%s\n-I%s" PREFIX "/include", PGCORRAL_VERSION, destdir);
    ok(o.code == 0 && strncmp(o.out, script, strlen(script)) == 0,
       "pkg-config: version %s and -I into the installed include folder", PGCORRAL_VERSION);
    if (o.code != 0 || strncmp(o.out, script, strlen(script)) != 0)
        diag("got: %s%s", o.out, o.err);
    ot_output_free(&o);

    /* A plugin built with nothing but pkg-config, in a folder of its own. */
    snprintf(path, sizeof path, "%s/plugin", destdir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/plugin/hello.c", destdir);
    write_file(path, plugin_src);
    snprintf(script, sizeof script,
             "cd '%s/plugin' && cc -shared -fPIC -Wall -Wextra -Werror "
             "$(pkg-config --cflags pgcorral) hello.c -o hello.so",
             destdir);
    rc = sh(script, pc_env, &o);
    if (!ok(rc == 0, "cc -shared -fPIC $(pkg-config --cflags pgcorral) hello.c -o hello.so"))
        diag("%s%s", o.out, o.err);
    ot_output_free(&o);

    /* ... which the installed binary loads and serves. */
    char bin[512], so[512];
    snprintf(bin, sizeof bin, "%s" PREFIX "/bin/pgcorral", destdir);
    snprintf(so, sizeof so, "%s/plugin/hello.so", destdir);
    sup_control = pgt_tmp_path("install.sock");
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", pgt_db_url());
    char *run_argv[] = {bin,        "run",      "--web",       "1",         "--jobs",
                        "0",        "--listen", "127.0.0.1:0", "--control", (char *)sup_control,
                        "--plugin", so,         NULL};
    char *run_env[] = {env_url, NULL};
    pgt_spawn(&sup, run_argv, run_env);
    bool ready = pgt_wait_until(sup_ready, &sup, 30000);
    char *resp = NULL;
    int status =
        ready ? ot_http_get((int)ot_config_int(sup_control, "listen_port"), "/api/v1/hello", &resp)
              : 0;
    if (!ok(status == 200 && resp && strstr(resp, "from an installed plugin"),
            "the installed binary loads it: GET /api/v1/hello answers 200 from the plugin"))
        diag("status %d, ready %d; log:\n%s", status, ready, sup.log);
    free(resp);
    kill(sup.pid, SIGTERM);
    ok(pgt_proc_wait_exit(&sup, 30000) && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) == 0,
       "and stops cleanly");
    pgt_proc_cleanup(&sup);

    /* The man page: no warning from man, nor from groff with every warning on. */
    snprintf(path, sizeof path, "%s" PREFIX "/share/man/man1/pgcorral.1", destdir);
    char *man_argv[] = {"/usr/bin/man", "--warnings", "-l", path, NULL};
    char *man_env[] = {"MANWIDTH=80", "LC_ALL=C", NULL};
    ot_run(man_argv, man_env, 60000, &o);
    ok(o.code == 0 && o.err[0] == '\0', "man --warnings -l pgcorral.1: no warnings%s%s",
       o.err[0] ? ": " : "", o.err);
    ok(strstr(o.out, "pgcorral - multi-process worker runtime") &&
           strstr(o.out, "pgcorral " PGCORRAL_VERSION) && strstr(o.out, "--wait-for-db") &&
           strstr(o.out, "NOTIFY_SOCKET"),
       "it renders NAME, the version, the options and the environment");
    ot_output_free(&o);
    char *groff_argv[] = {"/usr/bin/groff", "-man", "-Tutf8", "-ww", "-z", path, NULL};
    ot_run(groff_argv, NULL, 60000, &o);
    ok(o.code == 0 && o.err[0] == '\0', "groff -man -ww: no warnings%s%s", o.err[0] ? ": " : "",
       o.err);
    ot_output_free(&o);

    /* The units as systemd reads them (ExecStart= pointed at the installed binary). */
    if (access("/usr/bin/systemd-analyze", X_OK) != 0) {
        printf("ok %d # SKIP systemd-analyze is not installed\n", ++tap_run);
        fflush(stdout);
    } else {
        snprintf(script, sizeof script,
                 "set -e; d='%s/units'; mkdir -p \"$d\"; doc='%s" PREFIX "/share/doc/pgcorral'; "
                 "grep -q '^ExecStart=" PREFIX "/bin/pgcorral run ' \"$doc/pgcorral.service\"; "
                 "sed 's|^ExecStart=" PREFIX "/bin/pgcorral|ExecStart=%s|' "
                 "\"$doc/pgcorral.service\" > \"$d/pgcorral.service\"; "
                 "cp \"$doc/pgcorral.socket\" \"$d/\"; cd \"$d\"; "
                 "systemd-analyze verify --man=no ./pgcorral.socket ./pgcorral.service",
                 destdir, destdir, bin);
        rc = sh(script, NULL, &o);
        ok(rc == 0 && o.err[0] == '\0' && o.out[0] == '\0',
           "systemd-analyze verify: the service and socket units are clean%s%s",
           o.err[0] ? ": " : "", o.err);
        ot_output_free(&o);
        snprintf(script, sizeof script, "rm -rf '%s/units'", destdir);
        sh(script, NULL, &o);
        ot_output_free(&o);
    }

    /* Uninstall: every installed file goes, and the folder that is ours alone. */
    snprintf(script, sizeof script, "rm -rf '%s/plugin'", destdir);
    sh(script, NULL, &o);
    ot_output_free(&o);
    rc = make("uninstall", &o);
    if (!ok(rc == 0, "make uninstall with the same PREFIX and DESTDIR"))
        diag("%s%s", o.out, o.err);
    ot_output_free(&o);
    snprintf(script, sizeof script, "find '%s' ! -type d", destdir);
    sh(script, NULL, &o);
    ok(o.code == 0 && o.out[0] == '\0', "no file is left behind%s%s", o.out[0] ? ":\n" : "", o.out);
    ot_output_free(&o);
    ok(!dest_exists(PREFIX "/share/doc/pgcorral"), "nor share/doc/pgcorral");

    snprintf(script, sizeof script, "rm -rf '%s'", destdir);
    sh(script, NULL, &o);
    ot_output_free(&o);
    return done_testing();
}
