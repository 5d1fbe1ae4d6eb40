"""Evaluation logic, free of Prefect: plan the work a QA run still needs, answer a chunk of
questions with one method, turn outputs into store rows. The Prefect flows (``semoe.flows``)
and tasks (``semoe.tasks``) only wrap these functions.

One concern a module, bottom to top:

* ``configured``: the configured methods and datasets by label, and what they need;
* ``passage_sources``: where retrieving methods find a dataset's passages (its questions' own
  contexts or the corpus index);
* ``passage_experts``: the passage-expert and parameter-translator settings a run builds, and
  the translators' content keys;
* ``run_ids``: a QA run's id and its registration;
* ``scoring``: EM, F1 and recall@k of an output, and the rows of ``predictions`` and its
  per-example tables;
* ``planning``: the chunks of work a run still needs, and the reuse of stored answers;
* ``answer_chunks``: the model, passage experts and context a method runs with, and one chunk
  answered;
* ``preflight``: every check that can run before a run starts.
"""
