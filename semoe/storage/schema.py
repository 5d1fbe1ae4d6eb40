"""Versioned schema of the results store. Append a (version, statements) pair to
change it; never edit a released migration."""

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE runs (
                run_id VARCHAR PRIMARY KEY,
                name VARCHAR,
                config_hash VARCHAR NOT NULL,
                code_version VARCHAR NOT NULL,
                config_json JSON NOT NULL,
                status VARCHAR NOT NULL,
                started_at TIMESTAMP,
                finished_at TIMESTAMP,
                error VARCHAR,
                n_predictions BIGINT
            )""",
            """CREATE TABLE predictions (
                run_id VARCHAR NOT NULL,
                dataset VARCHAR NOT NULL,
                example_id VARCHAR NOT NULL,
                method VARCHAR NOT NULL,
                question VARCHAR,
                question_type VARCHAR,
                golds VARCHAR[],
                prediction VARCHAR,
                raw_output VARCHAR,
                em DOUBLE,
                f1 DOUBLE,
                recall DOUBLE,
                retrieval_count INTEGER,
                generation_count INTEGER,
                prompt_tokens INTEGER,
                generated_tokens INTEGER,
                latency_s DOUBLE,
                latency_retrieve_s DOUBLE,
                latency_generate_s DOUBLE,
                extra JSON,
                created_at TIMESTAMP,
                PRIMARY KEY (run_id, dataset, example_id, method)
            )""",
            """CREATE TABLE retrievals (
                run_id VARCHAR NOT NULL,
                dataset VARCHAR NOT NULL,
                example_id VARCHAR NOT NULL,
                method VARCHAR NOT NULL,
                step INTEGER NOT NULL,
                rank INTEGER NOT NULL,
                query VARCHAR,
                passage_id VARCHAR,
                title VARCHAR,
                score DOUBLE,
                PRIMARY KEY (run_id, dataset, example_id, method, step, rank)
            )""",
            """CREATE TABLE metrics (
                run_id VARCHAR NOT NULL,
                dataset VARCHAR NOT NULL,
                method VARCHAR NOT NULL,
                n BIGINT,
                em DOUBLE,
                f1 DOUBLE,
                recall DOUBLE,
                retrievals_per_question DOUBLE,
                seconds_per_question DOUBLE,
                computed_at TIMESTAMP,
                PRIMARY KEY (run_id, dataset, method)
            )""",
            """CREATE TABLE indexes (
                corpus_key VARCHAR NOT NULL,
                backend VARCHAR NOT NULL,
                passages BIGINT,
                seconds DOUBLE,
                passages_per_s DOUBLE,
                location VARCHAR,
                built_at TIMESTAMP,
                PRIMARY KEY (corpus_key, backend)
            )""",
            """CREATE VIEW leaderboard AS
                SELECT m.run_id, r.name AS run_name, m.dataset, m.method, m.n,
                       round(m.em, 4) AS em, round(m.f1, 4) AS f1, round(m.recall, 4) AS recall,
                       round(m.retrievals_per_question, 3) AS retrievals_per_question,
                       round(m.seconds_per_question, 3) AS seconds_per_question,
                       r.status, r.finished_at
                FROM metrics m JOIN runs r USING (run_id)""",
        ],
    ),
    (
        2,
        [
            # Triggered generation (DRAGIN family, SEMoE): per-question counters and each trigger.
            "ALTER TABLE predictions ADD COLUMN hallucination_events INTEGER",
            "ALTER TABLE predictions ADD COLUMN sentences INTEGER",
            "ALTER TABLE predictions ADD COLUMN latency_experts_s DOUBLE",
            """CREATE TABLE trigger_events (
                run_id VARCHAR NOT NULL,
                dataset VARCHAR NOT NULL,
                example_id VARCHAR NOT NULL,
                method VARCHAR NOT NULL,
                step INTEGER NOT NULL,
                token_index INTEGER,
                token VARCHAR,
                score DOUBLE,
                query VARCHAR,
                passage_ids VARCHAR[],
                PRIMARY KEY (run_id, dataset, example_id, method, step)
            )""",
            # Passage experts and the augmentations they are trained from (catalogues of the artifact cache).
            """CREATE TABLE experts (
                expert_key VARCHAR PRIMARY KEY,
                passage_id VARCHAR NOT NULL,
                path VARCHAR NOT NULL,
                base_model VARCHAR NOT NULL,
                rank INTEGER NOT NULL,
                alpha DOUBLE NOT NULL,
                lr DOUBLE NOT NULL,
                epochs INTEGER NOT NULL,
                targets VARCHAR[] NOT NULL,
                loss_before DOUBLE,
                loss_after DOUBLE,
                seconds DOUBLE,
                bytes BIGINT,
                sha256 VARCHAR
            )""",
            """CREATE TABLE augmentations (
                passage_hash VARCHAR NOT NULL,
                passage_id VARCHAR,
                model VARCHAR NOT NULL,
                prompt_version VARCHAR NOT NULL,
                status VARCHAR NOT NULL,
                rewrites VARCHAR[],
                qa JSON,
                qa_count INTEGER,
                attempts INTEGER,
                reason VARCHAR,
                seconds DOUBLE,
                created_at TIMESTAMP DEFAULT current_timestamp,
                PRIMARY KEY (passage_hash, model, prompt_version)
            )""",
        ],
    ),
    (
        3,
        [
            # Routing-policy evaluations (semoe.routing.measure, flow evaluate_routing): one row
            # per run × model × policy × mode; `setting` is the human-readable grid cell ("k=2",
            # "alpha=0.05 calibrated", "K=4") and `k` the fixed experts per token (NULL when adaptive).
            """CREATE TABLE routing_runs (
                run_id VARCHAR NOT NULL,
                model VARCHAR NOT NULL,
                model_key VARCHAR,
                policy_key VARCHAR NOT NULL,
                policy VARCHAR NOT NULL,
                policy_label VARCHAR,
                setting VARCHAR,
                k INTEGER,
                policy_params JSON,
                mode VARCHAR NOT NULL,
                texts INTEGER,
                tokens BIGINT,
                nll DOUBLE,
                perplexity DOUBLE,
                eval_seconds DOUBLE,
                tokens_per_s DOUBLE,
                decode_tokens_per_s DOUBLE,
                peak_memory_bytes BIGINT,
                memory_method VARCHAR,
                kv_cache_bytes BIGINT,
                experts_per_token DOUBLE,
                experts_std DOUBLE,
                floor_rate DOUBLE,
                ceiling_rate DOUBLE,
                qa_dataset VARCHAR,
                qa_n INTEGER,
                qa_em DOUBLE,
                qa_f1 DOUBLE,
                qa_note VARCHAR,
                heatmap_path VARCHAR,
                created_at TIMESTAMP,
                PRIMARY KEY (run_id, model, policy_key, mode)
            )""",
            """CREATE TABLE routing_layer_stats (
                run_id VARCHAR NOT NULL,
                model VARCHAR NOT NULL,
                policy_key VARCHAR NOT NULL,
                mode VARCHAR NOT NULL,
                layer INTEGER NOT NULL,
                module VARCHAR,
                decoder_layer INTEGER,
                num_experts INTEGER,
                tokens BIGINT,
                experts_mean DOUBLE,
                experts_std DOUBLE,
                floor_rate DOUBLE,
                ceiling_rate DOUBLE,
                overlap DOUBLE,
                k_histogram BIGINT[],
                expert_counts BIGINT[],
                PRIMARY KEY (run_id, model, policy_key, mode, layer)
            )""",
            # Training curves of semoe's small MoE LM; model_key is the checkpoint's cache key.
            """CREATE TABLE moe_lm_training (
                model_key VARCHAR NOT NULL,
                step INTEGER NOT NULL,
                loss DOUBLE NOT NULL,
                aux_loss DOUBLE NOT NULL,
                lr DOUBLE NOT NULL,
                seconds DOUBLE NOT NULL,
                PRIMARY KEY (model_key, step)
            )""",
            """CREATE VIEW routing_by_k AS
                SELECT r.run_id, r.model, r.policy, r.policy_key, r.policy_label, r.setting, r.k, r.mode, r.tokens,
                       round(r.perplexity, 4) AS perplexity,
                       round(r.qa_em, 4) AS qa_em, round(r.qa_f1, 4) AS qa_f1, r.qa_n,
                       round(r.experts_per_token, 3) AS experts_per_token,
                       round(r.experts_std, 3) AS experts_std,
                       round(r.floor_rate, 4) AS floor_rate, round(r.ceiling_rate, 4) AS ceiling_rate,
                       round(r.tokens_per_s, 1) AS tokens_per_s,
                       round(r.decode_tokens_per_s, 1) AS decode_tokens_per_s,
                       round(r.peak_memory_bytes / 1048576, 1) AS peak_memory_mib,
                       r.memory_method, r.heatmap_path, r.created_at
                FROM routing_runs r""",
        ],
    ),
    (
        4,
        [
            # Views for the common questions (semoe report, semoe export, semoe.storage.views.load_view).
            # Latest finished run of each config (config_hash), by dataset and method.
            """CREATE VIEW leaderboard_latest AS
                WITH latest AS (
                    SELECT run_id, config_hash, code_version FROM runs WHERE status = 'finished'
                    QUALIFY row_number() OVER (
                        PARTITION BY config_hash ORDER BY finished_at DESC NULLS LAST, started_at DESC, run_id) = 1
                )
                SELECT l.dataset, l.method, l.run_name, latest.config_hash, l.run_id, latest.code_version,
                       l.n, l.em, l.f1, l.recall, l.retrievals_per_question, l.seconds_per_question, l.finished_at
                FROM leaderboard l JOIN latest USING (run_id)""",
            # Accuracy at each number of retrievals a question took (adaptive methods vary it).
            """CREATE VIEW accuracy_by_retrievals AS
                SELECT run_id, dataset, method, retrieval_count AS retrievals, count(*) AS n,
                       round(avg(em), 4) AS em, round(avg(f1), 4) AS f1
                FROM predictions GROUP BY run_id, dataset, method, retrieval_count""",
            # Cost per method. A prediction used the experts of its retrieved passages when it spent
            # time on experts (methods without experts record 0 s); an expert's size is that of the
            # passage's expert for the run's base model, rank and targets (what fixes the size).
            """CREATE VIEW cost_by_method AS
                WITH expert_size AS (
                    SELECT r.run_id, e.passage_id, max(e.bytes) AS bytes
                    FROM runs r JOIN experts e
                      ON e.base_model = r.config_json->>'$.model.spec'
                     AND e.rank = TRY_CAST(r.config_json->>'$.experts.rank' AS INTEGER)
                     AND e.targets = TRY_CAST(r.config_json->'$.experts.targets' AS VARCHAR[])
                    GROUP BY r.run_id, e.passage_id
                ),
                expert_use AS (
                    SELECT DISTINCT p.run_id, p.dataset, p.method, p.example_id, rt.passage_id, s.bytes
                    FROM predictions p
                    JOIN retrievals rt USING (run_id, dataset, example_id, method)
                    JOIN expert_size s ON s.run_id = p.run_id AND s.passage_id = rt.passage_id
                    WHERE p.latency_experts_s > 0
                ),
                per_question AS (
                    SELECT run_id, dataset, method, example_id, sum(bytes) AS bytes
                    FROM expert_use GROUP BY run_id, dataset, method, example_id
                ),
                per_method AS (
                    SELECT run_id, dataset, method, count(*) AS experts, sum(bytes) AS bytes
                    FROM (SELECT DISTINCT run_id, dataset, method, passage_id, bytes FROM expert_use)
                    GROUP BY run_id, dataset, method
                )
                SELECT p.run_id, p.dataset, p.method, count(*) AS n,
                       round(avg(p.latency_s), 3) AS seconds_per_question,
                       round(avg(p.latency_retrieve_s), 4) AS retrieve_seconds_per_question,
                       round(avg(p.latency_generate_s), 4) AS generate_seconds_per_question,
                       round(avg(coalesce(p.latency_experts_s, 0)), 4) AS experts_seconds_per_question,
                       round(sum(p.latency_s), 3) AS total_seconds,
                       round(avg(p.retrieval_count), 3) AS retrievals_per_question,
                       round(avg(p.generation_count), 3) AS generations_per_question,
                       round(avg(p.prompt_tokens), 1) AS prompt_tokens_per_question,
                       round(avg(p.generated_tokens), 1) AS generated_tokens_per_question,
                       sum(p.prompt_tokens) + sum(p.generated_tokens) AS total_tokens,
                       coalesce(any_value(m.experts), 0) AS experts_used,
                       coalesce(any_value(m.bytes), 0)::BIGINT AS expert_bytes,
                       round(coalesce(sum(q.bytes), 0) / count(*), 1) AS expert_bytes_per_question
                FROM predictions p
                LEFT JOIN per_question q USING (run_id, dataset, method, example_id)
                LEFT JOIN per_method m USING (run_id, dataset, method)
                GROUP BY p.run_id, p.dataset, p.method""",
            # Per-layer routing statistics with the policy's label and setting.
            """CREATE VIEW routing_by_layer AS
                SELECT s.run_id, s.model, r.policy, r.policy_label, r.setting, r.k, s.mode, s.layer,
                       s.module, s.decoder_layer, s.num_experts, s.tokens,
                       round(s.experts_mean, 3) AS experts_mean, round(s.experts_std, 3) AS experts_std,
                       round(s.floor_rate, 4) AS floor_rate, round(s.ceiling_rate, 4) AS ceiling_rate,
                       round(s.overlap, 4) AS overlap
                FROM routing_layer_stats s LEFT JOIN routing_runs r USING (run_id, model, policy_key, mode)""",
        ],
    ),
    (
        5,
        [
            # Result identity (semoe.identity): an answer is stored with the key of everything that
            # decided it, and the run that generated it; a later run with the same key copies it
            # (re-scored against its own golds) instead of answering again.
            "ALTER TABLE predictions ADD COLUMN answer_key VARCHAR",
            "ALTER TABLE predictions ADD COLUMN answered_in VARCHAR",
            # The same for routing cells (model × policy × mode).
            "ALTER TABLE routing_runs ADD COLUMN cell_key VARCHAR",
            "ALTER TABLE routing_runs ADD COLUMN computed_in VARCHAR",
            # Corpus rows left out of an index under `skip_bad_rows` (each named in the log).
            "ALTER TABLE indexes ADD COLUMN skipped_rows BIGINT",
            # Prompt budget (semoe.generation.prompts.fit_messages): whether a prediction's prompt was
            # cut (extra->'$.truncation' says what), and why a question got no answer (e.g. it does not
            # fit the model's context; stored with a NULL prediction and em = f1 = 0).
            "ALTER TABLE predictions ADD COLUMN truncated BOOLEAN",
            "ALTER TABLE predictions ADD COLUMN error VARCHAR",
            "ALTER TABLE metrics ADD COLUMN errors BIGINT",
            "ALTER TABLE metrics ADD COLUMN truncated BIGINT",
            "DROP VIEW leaderboard_latest",
            "DROP VIEW leaderboard",
            """CREATE VIEW leaderboard AS
                SELECT m.run_id, r.name AS run_name, m.dataset, m.method, m.n,
                       round(m.em, 4) AS em, round(m.f1, 4) AS f1, round(m.recall, 4) AS recall,
                       round(m.retrievals_per_question, 3) AS retrievals_per_question,
                       round(m.seconds_per_question, 3) AS seconds_per_question,
                       m.errors, m.truncated,
                       r.status, r.finished_at
                FROM metrics m JOIN runs r USING (run_id)""",
            """CREATE VIEW leaderboard_latest AS
                WITH latest AS (
                    SELECT run_id, config_hash, code_version FROM runs WHERE status = 'finished'
                    QUALIFY row_number() OVER (
                        PARTITION BY config_hash ORDER BY finished_at DESC NULLS LAST, started_at DESC, run_id) = 1
                )
                SELECT l.dataset, l.method, l.run_name, latest.config_hash, l.run_id, latest.code_version,
                       l.n, l.em, l.f1, l.recall, l.retrievals_per_question, l.seconds_per_question,
                       l.errors, l.truncated, l.finished_at
                FROM leaderboard l JOIN latest USING (run_id)""",
        ],
    ),
    (
        6,
        [
            # Typed rows (semoe.storage.rows). Each prediction records its method's passage-expert
            # settings (a run's methods may use different ranks or targets; NULL without experts),
            # so views join on columns instead of JSON paths into runs.config_json.
            "ALTER TABLE predictions ADD COLUMN base_model VARCHAR",
            "ALTER TABLE predictions ADD COLUMN expert_rank INTEGER",
            "ALTER TABLE predictions ADD COLUMN expert_targets VARCHAR[]",
            # Rows stored before: the settings their run's config gave the method (its own
            # params.experts over the shared experts section; methods were bare names before
            # params existed). Predictions that spent no time on experts used none.
            """UPDATE predictions AS p
                SET base_model = s.base_model, expert_rank = s.expert_rank, expert_targets = s.expert_targets
                FROM (
                    SELECT r.run_id, coalesce(m->>'label', m->>'name', m->>'$') AS method,
                           r.config_json->>'$.model.spec' AS base_model,
                           coalesce(TRY_CAST(m->'params'->'experts'->>'rank' AS INTEGER),
                                    TRY_CAST(r.config_json->>'$.experts.rank' AS INTEGER)) AS expert_rank,
                           TRY_CAST(coalesce(m->'params'->'experts'->'targets', r.config_json->'$.experts.targets')
                                    AS VARCHAR[]) AS expert_targets
                    FROM runs r, unnest(CAST(r.config_json->'$.methods' AS JSON[])) AS t(m)
                ) AS s
                WHERE p.run_id = s.run_id AND p.method = s.method AND p.latency_experts_s > 0""",
            # Trigger events live in their table, the per-question counters in their columns:
            # drop the copies older code kept in extra.
            """UPDATE predictions
                SET extra = json_merge_patch(
                    extra, '{"trigger_events": null, "hallucination_events": null, "sentences": null}')
                WHERE extra IS NOT NULL""",
            # Cost per method, as in version 4, with each prediction's expert settings on its row.
            # Targets are a set (ExpertConfig sorts them when it validates; a default list is
            # not validated): compared in sorted order.
            "DROP VIEW cost_by_method",
            """CREATE VIEW cost_by_method AS
                WITH expert_size AS (
                    SELECT base_model, rank, targets, passage_id, max(bytes) AS bytes
                    FROM experts GROUP BY base_model, rank, targets, passage_id
                ),
                expert_use AS (
                    SELECT DISTINCT p.run_id, p.dataset, p.method, p.example_id, rt.passage_id, s.bytes
                    FROM predictions p
                    JOIN retrievals rt USING (run_id, dataset, example_id, method)
                    JOIN expert_size s
                      ON s.passage_id = rt.passage_id AND s.base_model = p.base_model
                     AND s.rank = p.expert_rank AND list_sort(s.targets) = list_sort(p.expert_targets)
                    WHERE p.latency_experts_s > 0
                ),
                per_question AS (
                    SELECT run_id, dataset, method, example_id, sum(bytes) AS bytes
                    FROM expert_use GROUP BY run_id, dataset, method, example_id
                ),
                per_method AS (
                    SELECT run_id, dataset, method, count(*) AS experts, sum(bytes) AS bytes
                    FROM (SELECT DISTINCT run_id, dataset, method, passage_id, bytes FROM expert_use)
                    GROUP BY run_id, dataset, method
                )
                SELECT p.run_id, p.dataset, p.method, count(*) AS n,
                       round(avg(p.latency_s), 3) AS seconds_per_question,
                       round(avg(p.latency_retrieve_s), 4) AS retrieve_seconds_per_question,
                       round(avg(p.latency_generate_s), 4) AS generate_seconds_per_question,
                       round(avg(coalesce(p.latency_experts_s, 0)), 4) AS experts_seconds_per_question,
                       round(sum(p.latency_s), 3) AS total_seconds,
                       round(avg(p.retrieval_count), 3) AS retrievals_per_question,
                       round(avg(p.generation_count), 3) AS generations_per_question,
                       round(avg(p.prompt_tokens), 1) AS prompt_tokens_per_question,
                       round(avg(p.generated_tokens), 1) AS generated_tokens_per_question,
                       sum(p.prompt_tokens) + sum(p.generated_tokens) AS total_tokens,
                       coalesce(any_value(m.experts), 0) AS experts_used,
                       coalesce(any_value(m.bytes), 0)::BIGINT AS expert_bytes,
                       round(coalesce(sum(q.bytes), 0) / count(*), 1) AS expert_bytes_per_question
                FROM predictions p
                LEFT JOIN per_question q USING (run_id, dataset, method, example_id)
                LEFT JOIN per_method m USING (run_id, dataset, method)
                GROUP BY p.run_id, p.dataset, p.method""",
        ],
    ),
    (
        7,
        [
            # Whether a reply has the "the answer is" its prediction follows
            # (semoe.generation.answer.has_answer_marker); without it the prediction is the reply's
            # first sentence. NULL for error rows and for rows stored before: not recorded then.
            "ALTER TABLE predictions ADD COLUMN answer_marker_found BOOLEAN",
            "ALTER TABLE metrics ADD COLUMN answer_marker_missing BIGINT",
            # The leaderboards of version 5, with the count of replies without the marker.
            "DROP VIEW leaderboard_latest",
            "DROP VIEW leaderboard",
            """CREATE VIEW leaderboard AS
                SELECT m.run_id, r.name AS run_name, m.dataset, m.method, m.n,
                       round(m.em, 4) AS em, round(m.f1, 4) AS f1, round(m.recall, 4) AS recall,
                       round(m.retrievals_per_question, 3) AS retrievals_per_question,
                       round(m.seconds_per_question, 3) AS seconds_per_question,
                       m.errors, m.truncated, m.answer_marker_missing,
                       r.status, r.finished_at
                FROM metrics m JOIN runs r USING (run_id)""",
            """CREATE VIEW leaderboard_latest AS
                WITH latest AS (
                    SELECT run_id, config_hash, code_version FROM runs WHERE status = 'finished'
                    QUALIFY row_number() OVER (
                        PARTITION BY config_hash ORDER BY finished_at DESC NULLS LAST, started_at DESC, run_id) = 1
                )
                SELECT l.dataset, l.method, l.run_name, latest.config_hash, l.run_id, latest.code_version,
                       l.n, l.em, l.f1, l.recall, l.retrievals_per_question, l.seconds_per_question,
                       l.errors, l.truncated, l.answer_marker_missing, l.finished_at
                FROM leaderboard l JOIN latest USING (run_id)""",
        ],
    ),
    (
        8,
        [
            # Analysis: recall named by what it averages, bootstrap
            # intervals, scores per question type (semoe.storage.columns defines every column).
            # A prediction's recall counting no retrieval as 0 (NULL without gold passages; NULL
            # for answers scored before: whether their question had gold passages is not stored).
            "ALTER TABLE predictions ADD COLUMN recall_all DOUBLE",
            "DROP VIEW leaderboard_latest",
            "DROP VIEW leaderboard",
            # The old average keeps its value under a name that says what it averages.
            "ALTER TABLE metrics RENAME COLUMN recall TO recall_retrieved",
            "ALTER TABLE metrics ADD COLUMN recall_all DOUBLE",
            *(
                f"ALTER TABLE metrics ADD COLUMN {m}_{end} DOUBLE"
                for m in ("em", "f1", "recall_retrieved", "recall_all")
                for end in ("lo", "hi")
            ),
            """CREATE TABLE metrics_by_type (
                run_id VARCHAR NOT NULL,
                dataset VARCHAR NOT NULL,
                method VARCHAR NOT NULL,
                question_type VARCHAR NOT NULL,
                n BIGINT,
                em DOUBLE,
                f1 DOUBLE,
                recall_retrieved DOUBLE,
                recall_all DOUBLE,
                errors BIGINT,
                em_lo DOUBLE,
                em_hi DOUBLE,
                f1_lo DOUBLE,
                f1_hi DOUBLE,
                recall_retrieved_lo DOUBLE,
                recall_retrieved_hi DOUBLE,
                recall_all_lo DOUBLE,
                recall_all_hi DOUBLE,
                computed_at TIMESTAMP,
                PRIMARY KEY (run_id, dataset, method, question_type)
            )""",
            """CREATE VIEW leaderboard AS
                SELECT m.run_id, r.name AS run_name, m.dataset, m.method, m.n,
                       round(m.em, 4) AS em, round(m.em_lo, 4) AS em_lo, round(m.em_hi, 4) AS em_hi,
                       round(m.f1, 4) AS f1, round(m.f1_lo, 4) AS f1_lo, round(m.f1_hi, 4) AS f1_hi,
                       round(m.recall_retrieved, 4) AS recall_retrieved,
                       round(m.recall_retrieved_lo, 4) AS recall_retrieved_lo,
                       round(m.recall_retrieved_hi, 4) AS recall_retrieved_hi,
                       round(m.recall_all, 4) AS recall_all,
                       round(m.recall_all_lo, 4) AS recall_all_lo, round(m.recall_all_hi, 4) AS recall_all_hi,
                       round(m.retrievals_per_question, 3) AS retrievals_per_question,
                       round(m.seconds_per_question, 3) AS seconds_per_question,
                       m.errors, m.truncated, m.answer_marker_missing,
                       r.status, r.finished_at
                FROM metrics m JOIN runs r USING (run_id)""",
            """CREATE VIEW leaderboard_latest AS
                WITH latest AS (
                    SELECT run_id, config_hash, code_version FROM runs WHERE status = 'finished'
                    QUALIFY row_number() OVER (
                        PARTITION BY config_hash ORDER BY finished_at DESC NULLS LAST, started_at DESC, run_id) = 1
                )
                SELECT l.dataset, l.method, l.run_name, latest.config_hash, l.run_id, latest.code_version,
                       l.n, l.em, l.em_lo, l.em_hi, l.f1, l.f1_lo, l.f1_hi,
                       l.recall_retrieved, l.recall_all, l.retrievals_per_question, l.seconds_per_question,
                       l.errors, l.truncated, l.answer_marker_missing, l.finished_at
                FROM leaderboard l JOIN latest USING (run_id)""",
            """CREATE VIEW leaderboard_by_type AS
                SELECT m.run_id, r.name AS run_name, m.dataset, m.method, m.question_type, m.n,
                       round(m.em, 4) AS em, round(m.em_lo, 4) AS em_lo, round(m.em_hi, 4) AS em_hi,
                       round(m.f1, 4) AS f1, round(m.f1_lo, 4) AS f1_lo, round(m.f1_hi, 4) AS f1_hi,
                       round(m.recall_retrieved, 4) AS recall_retrieved, round(m.recall_all, 4) AS recall_all,
                       m.errors, r.status, r.finished_at
                FROM metrics_by_type m JOIN runs r USING (run_id)""",
        ],
    ),
    (
        9,
        [
            # The QA method of a routing cell (routing.qa.method), its retrieval rate and speed.
            "ALTER TABLE routing_runs ADD COLUMN qa_method VARCHAR",
            "ALTER TABLE routing_runs ADD COLUMN qa_retrieval_rate DOUBLE",
            "ALTER TABLE routing_runs ADD COLUMN qa_tokens_per_s DOUBLE",
            "DROP VIEW routing_by_k",
            """CREATE VIEW routing_by_k AS
                SELECT r.run_id, r.model, r.policy, r.policy_key, r.policy_label, r.setting, r.k, r.mode, r.tokens,
                       round(r.perplexity, 4) AS perplexity,
                       round(r.qa_em, 4) AS qa_em, round(r.qa_f1, 4) AS qa_f1, r.qa_n,
                       round(r.experts_per_token, 3) AS experts_per_token,
                       round(r.experts_std, 3) AS experts_std,
                       round(r.floor_rate, 4) AS floor_rate, round(r.ceiling_rate, 4) AS ceiling_rate,
                       round(r.tokens_per_s, 1) AS tokens_per_s,
                       round(r.decode_tokens_per_s, 1) AS decode_tokens_per_s,
                       round(r.peak_memory_bytes / 1048576, 1) AS peak_memory_mib,
                       r.memory_method, r.heatmap_path, r.created_at,
                       r.qa_method, round(r.qa_retrieval_rate, 4) AS qa_retrieval_rate,
                       round(r.qa_tokens_per_s, 1) AS qa_tokens_per_s
                FROM routing_runs r""",
        ],
    ),
    (
        10,
        [
            # Training curves of DyPRAG-style parameter translators (semoe.experts.translator):
            # checkpoint_key is the checkpoint file's content key, as in the answers it produced.
            """CREATE TABLE translator_training (
                checkpoint_key VARCHAR NOT NULL,
                step INTEGER NOT NULL,
                epoch INTEGER NOT NULL,
                passage_id VARCHAR NOT NULL,
                loss DOUBLE NOT NULL,
                mse DOUBLE NOT NULL,
                lm DOUBLE NOT NULL,
                kl DOUBLE NOT NULL,
                seconds DOUBLE NOT NULL,
                PRIMARY KEY (checkpoint_key, step)
            )""",
        ],
    ),
]
