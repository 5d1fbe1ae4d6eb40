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
]
