"""What a stored result depends on, as hashes: the rule is that a result is reused only when
nothing that produced it changed, and always reused otherwise.

Three kinds of input decide a result:

- **settings**: the config sections the job reads (a QA answer: the model, the generation
  settings and the sections of its method; a routing cell: the ``routing:`` section and the
  texts it is measured on). Sections a job does not read never enter its hash, so adding
  ``routing:`` to a QA config, or changing ``experts.rank`` for a routing grid, reuses results.
- **data**: the content of what is read, never the file's path or time: a question's text
  (its golds only re-score a stored answer), the corpus key (content of the corpus file and
  the reader version), the texts a routing cell measures.
- **code**: the source of the modules that can change a result, compared by syntax tree
  with docstrings and comments dropped, plus the versions of Python and of the libraries that
  compute it. ``CODE_PARTS`` names those modules per kind of result; the CLI, flows, tasks,
  reports, storage and docs are outside every part, so editing them reuses every result.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

import semoe
from semoe.config import DatasetConfig, MethodSpec, SemoeConfig
from semoe.data.schema import Example, Passage
from semoe.generation import METHODS
from semoe.generation.base import build_method
from semoe.generation.templates import template_for
from semoe.hashing import digest

# Modules (relative to the package) whose code can change a result of each kind.
CODE_PARTS: dict[str, tuple[str, ...]] = {
    # How a question becomes an answer: data readers (passages), retrieval, prompts, decoding,
    # answer extraction, passage experts, model loading, and the evaluation modules that pick a
    # question's passage source, its methods' context and its passage-expert settings.
    "answers": (
        "data",
        "retrieval",
        "indexing.py",
        "generation",
        "experts",
        "models",
        "evaluation/answer_chunks.py",
        "evaluation/passage_sources.py",
        "evaluation/passage_experts.py",
    ),
    # How an answer becomes EM/F1/recall and their intervals (and which rows score 0 or None):
    # a change re-scores stored answers, never re-answers.
    "scores": ("metrics.py", "stats.py", "evaluation/scoring.py"),
    # Routing cells: policies, patching, measurements, the small MoE LM, and the QA path they score.
    "routing": ("routing", "moe_lm", "models", "data", "generation", "metrics.py"),
}

# Modules that are data, not code: the prompt templates (every module of the package but its
# ``__init__``, which defines them). Each answer's key holds the content of the template it was
# asked with (``answer_scope``), so editing one template re-answers only the datasets using it.
DATA_PACKAGES = ("generation/templates",)

# Libraries whose version can change the numbers (a missing one counts as absent).
LIBRARIES = ("torch", "transformers", "tokenizers", "peft", "safetensors", "gguf", "tantivy", "bm25s", "numpy", "scipy")


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _is_data(root: Path, f: Path) -> bool:
    return f.name != "__init__.py" and any(f.parent == root / p for p in DATA_PACKAGES)


# Each module's syntax-tree dump by the hash of its text. Parsing is nearly all the cost of
# ``source_digest`` (~0.4 s a package); keyed by content, not by path or mtime, an unchanged
# module (in any copy of the tree) is parsed once per process and any edit is a new key.
_TREE_DUMPS: dict[bytes, bytes] = {}


def _tree_dump(f: Path) -> bytes:
    text = f.read_text(encoding="utf-8")
    key = hashlib.sha256(text.encode()).digest()
    dump = _TREE_DUMPS.get(key)
    if dump is None:
        dump = _TREE_DUMPS[key] = ast.dump(_strip_docstrings(ast.parse(text, filename=str(f)))).encode()
    return dump


def source_digest(root: Path, parts: Iterable[str]) -> str:
    """Hash of the syntax trees of the modules ``parts`` (files or packages relative to
    ``root``), less the data modules of ``DATA_PACKAGES``: comments, docstrings and layout do
    not count, code and file names do. Each distinct module text is parsed once per process."""
    h = hashlib.sha256()
    for part in parts:
        path = root / part
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            if _is_data(root, f):
                continue
            h.update(str(f.relative_to(root)).encode())
            h.update(_tree_dump(f))
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def code_digest(kind: str) -> str:
    """Code identity of one kind of result: the source digest of ``CODE_PARTS[kind]`` with
    the Python and library versions. Raises ``KeyError`` for an unknown kind."""
    source = source_digest(Path(semoe.__file__).parent, CODE_PARTS[kind])
    return digest([source, environment()], 12)


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, str | None]:
    """Python major.minor and the versions of ``LIBRARIES`` (None when not installed)."""
    versions: dict[str, str | None] = {"python": ".".join(platform.python_version_tuple()[:2])}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return versions


def code_version(kinds: Iterable[str] = ("answers", "scores")) -> str:
    """Human-readable code identity stored with a run: package version and the digests."""
    return f"{semoe.__version__} " + " ".join(f"{k}={code_digest(k)}" for k in kinds)


# --- QA answers ----------------------------------------------------------------------


def examples_digest(examples: Iterable[Example]) -> str:
    """Content of a dataset as loaded (order, ids, questions, golds, types, gold passages, and
    the contexts a file gives with its questions)."""
    return digest([ex.as_dict() for ex in examples])


def _method_identity(cfg: SemoeConfig, spec: MethodSpec) -> dict:
    """A method's name and its resolved params (``Method.resolve``), less operational fields."""
    return {"name": spec.name, "params": build_method(spec, cfg).params.identity()}


def answer_scope(
    cfg: SemoeConfig,
    spec: MethodSpec,
    corpus_key: str | None,
    dataset: DatasetConfig,
    translator_key: str | None = None,
) -> str:
    """Hash of everything but the question that decides the answer of the method ``spec`` to
    a question of ``dataset``: its resolved params, the model and generation settings, the
    content of the dataset's prompt template (``PromptTemplate.identity``: its instruction and
    exemplars, not its name or which dataset uses it), the retrieval settings and corpus
    content (retrieving methods only; None where the dataset provides the passages), the
    answer code and, for a method whose passage experts come from a parameter translator, the
    content key of that translator's checkpoint (``translator_key``): a retrained or replaced
    translator re-answers. Not its label: two labels with the same settings share answers."""
    retrieves = METHODS.get(spec.name).uses_retrieval
    scope = {
        "method": _method_identity(cfg, spec),
        "model": cfg.model.identity(),
        "generation": cfg.generation.identity(),
        "prompt": template_for(dataset).identity(),
        "retrieval": cfg.retrieval.identity() if retrieves else None,
        "corpus": corpus_key if retrieves else None,
        "code": code_digest("answers"),
    }
    if translator_key is not None:  # other methods keep their keys
        scope["translator"] = translator_key
    return digest(scope)


def answer_key(scope: str, question: str, contexts: Sequence[Passage] | None = None) -> str:
    """Identity of one stored answer: ``answer_scope`` and the question text; for a retrieving
    method on a dataset whose questions bring their own passages (``datasets[].passages``),
    also those ``contexts`` (its scope then has no corpus). Golds are not part of it: an
    answer whose golds changed is re-scored, not re-generated."""
    if contexts is None:
        return digest([scope, question])
    return digest([scope, question, [p.as_dict() for p in contexts]])


def qa_settings(cfg: SemoeConfig) -> dict:
    """The settings of a QA evaluation: datasets (not their location), the methods with their
    labels and resolved params, the model, generation and (when a method retrieves) retrieval."""
    retrieves = any(METHODS.get(m.name).uses_retrieval for m in cfg.methods)
    return {
        "datasets": [d.identity() for d in cfg.datasets],
        "methods": [{"label": m.display_name, **_method_identity(cfg, m)} for m in cfg.methods],
        "model": cfg.model.identity(),
        "generation": cfg.generation.identity(),
        "retrieval": cfg.retrieval.identity() if retrieves else None,
    }


def qa_config_hash(cfg: SemoeConfig) -> str:
    return digest(qa_settings(cfg))


def qa_run_id(
    cfg: SemoeConfig, examples: dict[str, list], corpus_key: str | None, translators: dict[str, str] | None = None
) -> str:
    """A QA run is one evaluation of exactly these inputs: settings, the datasets' content
    (``examples`` by dataset name), the corpus content, the answer and scoring code and the
    parameter translators its methods use (``translators``: method label → checkpoint content
    key). Any change is a new run; its unchanged answers are copied from earlier runs
    (``answer_key``)."""
    run = {
        "job": "qa",
        "settings": qa_settings(cfg),
        "data": {name: examples_digest(exs) for name, exs in examples.items()},
        "corpus": corpus_key,
        "code": [code_digest("answers"), code_digest("scores")],
    }
    if translators:  # runs without translator experts keep their ids
        run["translators"] = translators
    return digest(run)


# --- routing cells -------------------------------------------------------------------


def routing_settings(cfg: SemoeConfig) -> dict:
    """The settings of a routing evaluation: the ``routing:`` section, plus the dataset,
    generation and method settings of its QA scoring when it has one. Nothing of the
    pipeline's ``methods:``."""
    routing = cfg.routing
    settings: dict[str, Any] = {"routing": routing.identity() if routing is not None else None}
    if routing is not None and routing.qa is not None:
        dataset = next((d for d in cfg.datasets if d.display_name == routing.qa.dataset), None)
        retrieves = METHODS.get(routing.qa.method.name).uses_retrieval
        settings["qa"] = {
            "dataset": dataset.identity() if dataset else None,
            "generation": cfg.generation.identity(),
            # The method's resolved params; the retrieval settings they may default from (top_k).
            # Its passages are the questions' own contexts, part of the QA content (examples_digest).
            "method": _method_identity(cfg, routing.qa.method),
            "retrieval": cfg.retrieval.identity() if retrieves else None,
            "prompt": template_for(dataset).identity() if dataset else None,
        }
    return settings


def routing_config_hash(cfg: SemoeConfig) -> str:
    return digest(routing_settings(cfg))


def routing_run_id(cfg: SemoeConfig, corpus_key: str, qa_examples: list) -> str:
    """Routing settings, the content of the corpus its texts come from, the QA questions'
    content and the routing code. Cells stored by earlier runs are copied (``routing_cell_key``)."""
    return digest(
        {
            "job": "routing",
            "settings": routing_settings(cfg),
            "corpus": corpus_key,
            "qa": examples_digest(qa_examples),
            "code": code_digest("routing"),
        }
    )


# The grid's own fields: one cell does not depend on the other cells of its grid.
_GRID_FIELDS = ("models", "policies", "mode", "baseline")


def routing_cell_key(cfg: SemoeConfig, model: dict, policy: dict, mode: str, corpus_key: str, qa_examples: list) -> str:
    """Identity of one routing cell: its model and policy settings and mode, the settings every
    cell shares (texts, lengths, dtype, QA), the corpus and QA content and the routing code;
    adding a policy or a model to a grid reuses the cells already measured."""
    settings = routing_settings(cfg)
    shared = {k: v for k, v in (settings["routing"] or {}).items() if k not in _GRID_FIELDS}
    return digest(
        {
            "job": "routing-cell",
            "shared": shared,
            "qa": [settings.get("qa"), examples_digest(qa_examples)],
            "model": model,
            "policy": policy,
            "mode": mode,
            "corpus": corpus_key,
            "code": code_digest("routing"),
        }
    )
