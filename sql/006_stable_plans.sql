-- Plans of the claim: custom, never generic. PL/pgSQL caches each statement's plan per
-- connection, and after five runs keeps a generic one; made while t_job_info is small (a
-- fresh database, a quiet morning), that plan scans the table instead of its indexes, and
-- keeps doing so as the table grows: measured, the claim's closing lookup took 2.3-4.8 ms
-- instead of 0.04 ms per call and the per-tenant probe 0.8 ms instead of 0.013 ms
-- (docs/benchmarks.md). A custom plan is made for the current sizes on every run; the GUC
-- holds for everything the function runs, including the triggers its updates fire.
ALTER FUNCTION jobservice_claim_jobs(text, integer, text[], text[], text[])
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
    SET enable_sort = off SET jit = off;
ALTER FUNCTION jobservice_claim_and_start(text, integer, text[], text[], text[], text[])
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
    SET enable_sort = off SET jit = off;
ALTER FUNCTION jobservice_finish_and_claim(text, uuid[], integer[], text[], integer[], text[],
                                           text[], text[], text[], double precision[],
                                           integer[], integer[], text[], text[], integer,
                                           text[], text[], text[], text[])
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
    SET enable_sort = off SET jit = off;

-- (tenant, status) held every job, finished ones too: the claim's walk over tenants with
-- queued work used it (index-only) and then stepped over each tenant's finished rows to reach
-- its QUEUED ones, and the per-tenant pick sorted a tenant's rows from it. The walk and the
-- pick belong on t_job_info_queued_idx, whose size is the queued set; every job update also
-- paid for keeping this index. Counting jobs per (tenant, status) for the metrics gauge now
-- reads the table.
DROP INDEX t_job_info_tenant_status_idx;
