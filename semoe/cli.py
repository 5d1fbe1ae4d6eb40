"""The ``semoe`` command line. Heavy libraries (torch, transformers, prefect) are
imported only by the subcommands that need them, so ``--help`` and ``ls`` are instant."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

from semoe.checks import check_config
from semoe.config import ConfigError, config_yaml, load_config
from semoe.data import CORPORA, DATASETS
from semoe.data.schema import DataFormatError
from semoe.deployments import check, render, served_deployment
from semoe.evaluation.passage_experts import translator_settings
from semoe.evaluation.preflight import preflight
from semoe.experts.format import ExpertFileError
from semoe.flows.api import STARTUP_TIMEOUT_ENV, STARTUP_TIMEOUT_S, ApiError, prefect_api
from semoe.generation import METHODS
from semoe.generation.templates import TEMPLATES
from semoe.indexing import build_index, describe_corpus, record_index
from semoe.models.loading import EMBEDDED_MODELS, ModelLoadError, resolve_model_dir
from semoe.moe_lm.cli import cli_main
from semoe.registry import UnknownNameError
from semoe.retrieval import RETRIEVERS
from semoe.retrieval.base import RetrievalError
from semoe.routing import ADAPTERS, RoutingError
from semoe.routing.grid import SPEED_QUALITY_COLUMNS, routing_run_id, routing_section
from semoe.storage.artifacts import CacheError
from semoe.storage.columns import column_rows
from semoe.storage.locks import run_lock
from semoe.storage.results import ResultStore, StoreError
from semoe.storage.views import export_parquet, open_current
from semoe.tasks import interrupts
from semoe.textfmt import format_table

DEFAULT_STORE = "results/semoe.duckdb"


class Interrupted(Exception):
    """Ctrl-C during a command; the message says what was kept."""


def _friendly_errors() -> tuple[type[BaseException], ...]:
    return (
        ConfigError,
        UnknownNameError,
        DataFormatError,
        StoreError,
        RetrievalError,
        ModelLoadError,
        CacheError,
        ExpertFileError,
        ApiError,
    )


def _load(args) -> "SemoeConfig":  # noqa: F821

    cfg = load_config(args.config, args.set)
    check_config(cfg)
    return cfg


def _prefect_defaults() -> None:
    """Offline-friendly Prefect settings unless the user chose otherwise."""

    os.environ.setdefault(STARTUP_TIMEOUT_ENV, str(STARTUP_TIMEOUT_S))  # also for `semoe serve`
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "semoe")  # progress of long stages in the run log
    logging.getLogger("semoe").setLevel(logging.INFO)


def _run_flow(args, cfg, run_id: str, kept_sql: str, kept_what: str, flow_call, prepare=None, while_starting=None):
    """``flow_call()`` holding the run's lock (another process with the same run id: wait
    ``args.wait`` s, then stop), on a Prefect API that a Ctrl-C leaves alive (semoe.flows.api),
    after ``while_starting()``, which runs while a temporary API starts.
    ``prepare()``, when given, runs first on the same API under ``run_id``'s lock and returns
    the run's final id, whose lock ``flow_call()`` then holds (a run whose id names artifacts
    that ``prepare`` builds). Ctrl-C raises ``Interrupted`` saying how many ``kept_what``
    (``kept_sql``'s count) were kept."""

    def note(text: str) -> None:
        print(f"semoe: {text}", file=sys.stderr)

    with run_lock(cfg.store.path, run_id, args.wait, note):
        try:
            with prefect_api(while_starting), interrupts.deferred_interrupts():
                if prepare is None:
                    return flow_call()
                run_id = prepare()
                with run_lock(cfg.store.path, run_id, args.wait, note):
                    return flow_call()
        except BaseException:
            if not interrupts.requested():
                raise
            kept = _count_kept(cfg.store.path, kept_sql, run_id)
            raise Interrupted(
                f"run {run_id} stopped; its {kept} committed {kept_what} are kept in {cfg.store.path}: "
                "rerun the same command to resume"
            ) from None


def _count_kept(store_path, sql: str, run_id: str) -> str:
    try:
        return str(ResultStore(store_path, read_only=True, lock_wait_s=2).query(sql, [run_id])[0]["n"])
    except StoreError:  # no store yet, or held by another writer
        return "(uncounted)"


def _warm_up(cfg) -> None:
    """The run's first work, done while its temporary Prefect API starts (~7 s in a process of
    its own): the flows' imports and the embedded model's one-time conversion into the cache."""
    import semoe.flows.pipeline  # noqa: F401

    if cfg.model.spec in EMBEDDED_MODELS:
        resolve_model_dir(cfg.model.spec, cfg.cache.root)


def cmd_run(args) -> int:
    cfg = _load(args)
    run_id = preflight(cfg)
    _prefect_defaults()

    t0 = time.perf_counter()
    prepare = None
    if translator_settings(cfg):
        # The run id names each translator's checkpoint, known once it is built (before that,
        # preflight's id names its recipe): build them first (reused when built), then lock the
        # id the run is stored under.
        def prepare() -> str:
            from semoe.flows.pipeline import build_translators_first

            build_translators_first(cfg)
            return preflight(cfg)

    def run_pipeline() -> dict:
        from semoe.flows.pipeline import pipeline

        return pipeline(cfg)

    result = _run_flow(
        args,
        cfg,
        run_id,
        "SELECT count(*) AS n FROM predictions WHERE run_id = ?",
        "answers",
        run_pipeline,
        prepare,
        lambda: _warm_up(cfg),
    )
    from semoe.flows.pipeline import LEADERBOARD_COLUMNS

    cols = LEADERBOARD_COLUMNS
    print()
    print(format_table(cols, [[r[c] for c in cols] for r in result["leaderboard"]]))
    print()
    run_id, store = result["run_id"], _store_option(result["store"])
    print(
        f"run {run_id}: {result['produced']} new answers, {result['reused']} reused from earlier runs, "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    if result["report"]:
        print(f"report: {' and '.join(result['report'])}")
    else:
        print(f"report: not written (report.write: false); semoe report {run_id}{store} writes it")
    print(f"results: {result['store']}  (columns: semoe columns)")
    print(f"  semoe compare {run_id}{store}    # intervals, per question type, paired tests")
    print(f'  semoe sql{store} "select method, avg(f1) from predictions group by 1"')
    return 0


def _store_option(path: str | Path) -> str:
    """`` --store PATH`` for a command hint, empty when ``path`` is the file the default names."""
    if Path(path).expanduser().resolve() == Path(DEFAULT_STORE).resolve():
        return ""
    return f" --store {shlex.quote(str(path))}"


class _StderrHandler(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a line is written, not when the handler
    was made (a redirected or captured stream may be closed by then)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_progress() -> None:
    """semoe's INFO lines (progress of long stages) on stderr, for commands run without Prefect."""
    logger = logging.getLogger("semoe")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("semoe: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def cmd_index(args) -> int:
    """Index the configured corpus, reusing a complete index, and record the build in the store.
    The plain function, not the ``index_corpus`` flow: one step gains nothing from Prefect's
    retries or UI but would wait for an API server to start (``semoe serve --flow index_corpus``
    gives a UI-visible run). A build killed midway leaves nothing marked complete."""

    cfg = _load(args)
    _log_progress()
    info = build_index(cfg)
    where = f"{info.backend} index of {describe_corpus(cfg.corpus)} at {info.index_dir}"
    if info.reused:
        print(f"reused the {where} (corpus key {info.corpus_key})")
        return 0
    record_index(cfg.store.path, info)
    skipped = f", {info.skipped_rows} malformed rows skipped" if info.skipped_rows else ""
    print(
        f"indexed {info.passages:,} passages in {info.seconds:.1f} s ({info.passages_per_s or 0:,.0f} passages/s"
        f"{skipped}): {where}"
    )
    print(f"recorded in {cfg.store.path} (table indexes)")
    return 0


def cmd_validate(args) -> int:
    """The same preflight as ``run`` (names, files, store, cache, Elasticsearch, model), without
    Prefect; prints the resolved config, its hash and the run id it would make."""

    cfg = _load(args)
    run_id = preflight(cfg)
    print(config_yaml(cfg), end="")
    print(f"# config hash: {cfg.config_hash()}")
    print(f"# preflight passed: run id {run_id}")
    return 0


def cmd_ls(args) -> int:
    sections = {
        "datasets": DATASETS.describe(),
        "corpus formats": CORPORA.describe(),
        "retrievers": RETRIEVERS.describe(),
        "methods": METHODS.describe(),
        "prompt templates": TEMPLATES.describe(),
        "embedded models": {k: v.description for k, v in EMBEDDED_MODELS.items()},
        "model families (routing)": ADAPTERS.describe(),
    }
    for title, items in sections.items():
        print(f"{title}:")
        for name, desc in items.items():
            print(f"  {name:<24} {desc}")
    return 0


def cmd_sql(args) -> int:
    import duckdb

    store = ResultStore(args.store, read_only=True)
    try:
        table = store.query_table(args.query)
    except duckdb.Error as e:
        raise StoreError(f"query failed: {e}") from None
    rows = list(zip(*[col.to_pylist() for col in table.columns])) if table.num_columns else []
    print(format_table(table.column_names, rows, args.format))
    return 0


def _report_formats(text: str) -> list[str]:
    from semoe.reporting import REPORT_FORMATS

    formats = [f.strip() for f in text.split(",") if f.strip()]
    if not formats or set(formats) - set(REPORT_FORMATS):
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(REPORT_FORMATS)}, comma-separated")
    return formats


def cmd_report(args) -> int:
    from semoe.reporting import write_run_report

    written = write_run_report(args.store, args.run_id, args.out, args.format)
    print(f"report of run {written.report.run_id}:")
    for path in written.paths.values():
        print(f"  {path}")
    return 0


def cmd_compare(args) -> int:
    """A QA run's scores with their intervals, per question type, and every pair of methods compared."""
    from semoe.reporting import QATables, resolve_run_id

    store = open_current(args.store)
    run_id = resolve_run_id(store, args.run_id)
    tables = QATables.of(store, run_id).tables()
    if args.format == "json":
        print(json.dumps({name: t.rows for name, t in tables.items()}, indent=2, default=str))
        return 0
    if not tables["leaderboard"].rows:
        print(f"run {run_id} has no QA scores in {store.path}")
        return 0
    for table in tables.values():
        print(table.caption)
        print(format_table(table.columns, [[r[c] for c in table.columns] for r in table.rows]))
        print()
    print("column definitions: semoe columns")
    return 0


def cmd_columns(args) -> int:
    rows = column_rows()
    print(format_table(("column", "meaning", "unit"), [list(r.values()) for r in rows], args.format))
    return 0


def cmd_export(args) -> int:
    names = [n.strip() for arg in args.tables for n in arg.split(",") if n.strip()] if args.tables else None
    written = export_parquet(args.store, args.out, names)
    for path in written.values():
        print(path)
    print(f"{len(written)} Parquet files in {args.out}")
    return 0


def cmd_serve(args) -> int:
    """One machine, no work pool: serve the flow with the resolved config as its parameters."""
    cfg = _load(args)
    _prefect_defaults()
    from prefect import serve

    serve(served_deployment(cfg, args.flow, args.cron, args.name))
    return 0


def cmd_deployments(args) -> int:
    path = Path(args.file)
    if args.action == "render":
        path.write_text(render(path))
        print(f"rendered the parameters of {path} from its config files")
        return 0
    problems = check(path)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{path}: deployments match their config files")
    return 1 if problems else 0


def cmd_route(args) -> int:
    """The routing grid of the config's ``routing:`` section; prints the speed/quality table."""

    cfg = _load(args)
    routing_section(cfg)
    _prefect_defaults()
    from semoe.flows.routing import evaluate_routing

    t0 = time.perf_counter()
    try:
        result = _run_flow(
            args,
            cfg,
            routing_run_id(cfg),
            "SELECT count(*) AS n FROM routing_runs WHERE run_id = ?",
            "routing cells",
            lambda: evaluate_routing(cfg),
        )
    except RoutingError as e:  # unsupported model, no-op override, ...: the message names the problem
        print(f"semoe: error: {e}", file=sys.stderr)
        return 2
    cols = SPEED_QUALITY_COLUMNS
    print()
    print(format_table(cols, [[r[c] for c in cols] for r in result["table"]]))
    print()
    print(
        f"routing run {result['run_id']}: {result['produced']} new cells ({result['reused']} reused) "
        f"in {time.perf_counter() - t0:.1f} s; "
        f"heatmaps in {result['heatmaps']}"
    )
    print(f'results: {result["store"]}  (try: semoe sql --store {result["store"]} "select * from routing_by_k")')
    return 0


def cmd_moe_lm(argv: Sequence[str]) -> int:
    """Delegates to the MoE LM's own parser (its options are its own)."""

    return cli_main(list(argv))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="semoe",
        description="Sparse and Extendable MoE evaluation pipeline",
        epilog="What the printed columns mean (EM, F1 and their intervals, recall_retrieved, recall_all, "
        "seconds_per_question, ...): `semoe columns`.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("config", help="YAML config file (see configs/)")
        sp.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. retrieval.top_k=5"
        )
        return sp

    def with_wait(sp):
        sp.add_argument(
            "--wait",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="if another process is running the same run, wait up to SECONDS for it (default: stop)",
        )

    with_wait(with_config(sub.add_parser("run", help="run the pipeline flow (index → evaluate → store)")))
    with_config(
        sub.add_parser("index", help="index the config's corpus with its retrieval backend, without evaluating")
    )
    with_config(
        sub.add_parser(
            "validate",
            help="run the preflight of `run` (files, names, store, Elasticsearch) and print the resolved config",
        )
    )
    with_wait(
        with_config(sub.add_parser("route", help="evaluate MoE routing policies (the config's routing: section)"))
    )
    sub.add_parser("ls", help="list registered datasets, corpus formats, retrievers, methods, prompt templates")
    sq = sub.add_parser("sql", help="read-only SQL against the results store")
    sq.add_argument("query")
    sq.add_argument("--store", default=DEFAULT_STORE, help=f"DuckDB file (default {DEFAULT_STORE})")
    sq.add_argument("--format", choices=["table", "csv", "json"], default="table")
    rp = sub.add_parser("report", help="markdown/HTML report of a run with plots (accuracy, routing, cost)")
    rp.add_argument("run_id", help="run id, or a unique prefix of one")
    rp.add_argument("--store", default=DEFAULT_STORE, help=f"DuckDB file (default {DEFAULT_STORE})")
    rp.add_argument("--out", help="output directory (default: reports/<run id> next to the store)")
    rp.add_argument("--format", type=_report_formats, default="md,html", help="md, html or md,html (default)")
    cp = sub.add_parser(
        "compare", help="a QA run's scores with 95%% intervals, per question type, and paired tests between methods"
    )
    cp.add_argument("run_id", help="run id, or a unique prefix of one")
    cp.add_argument("--store", default=DEFAULT_STORE, help=f"DuckDB file (default {DEFAULT_STORE})")
    cp.add_argument("--format", choices=["table", "json"], default="table", help="json: one object of the tables")
    co = sub.add_parser("columns", help="what each printed and stored column means (name, meaning, unit)")
    co.add_argument("--format", choices=["table", "csv", "json"], default="table")
    ex = sub.add_parser("export", help="write every table and view of the store as Parquet (read-only)")
    ex.add_argument("--store", default=DEFAULT_STORE, help=f"DuckDB file (default {DEFAULT_STORE})")
    ex.add_argument("--out", required=True, help="output directory (one <name>.parquet per table or view)")
    ex.add_argument("--tables", nargs="+", metavar="NAME", help="only these tables/views (default: all)")
    sv = sub.add_parser("serve", help="serve a flow on this machine (flow.serve): runs on a schedule or on demand")
    with_config(sv)
    sv.add_argument(
        "--flow", default="pipeline", help="pipeline (default), index_corpus, build_experts, evaluate_routing"
    )
    sv.add_argument("--cron", help="schedule, e.g. '0 2 * * *' (UTC); without it runs only when triggered")
    sv.add_argument("--name", help="deployment name (default: <config name>-serve)")
    dp = sub.add_parser("deployments", help="render or check deployments/prefect.yaml against the config files")
    dp.add_argument("action", choices=["render", "check"])
    dp.add_argument("--file", default="deployments/prefect.yaml", help="Prefect project file (default %(default)s)")
    ml = sub.add_parser(
        "moe-lm", help="train or query semoe's small MoE LM (see `semoe moe-lm --help`)", add_help=False
    )
    ml.add_argument("rest", nargs=argparse.REMAINDER)
    return p


COMMANDS = {
    "run": cmd_run,
    "index": cmd_index,
    "route": cmd_route,
    "validate": cmd_validate,
    "ls": cmd_ls,
    "sql": cmd_sql,
    "report": cmd_report,
    "compare": cmd_compare,
    "columns": cmd_columns,
    "export": cmd_export,
    "serve": cmd_serve,
    "deployments": cmd_deployments,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["moe-lm"]:
        return cmd_moe_lm(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except _friendly_errors() as e:
        print(f"semoe: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"semoe: interrupted: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("semoe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
