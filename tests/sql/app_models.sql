-- chatd.list_models: the enabled models of enabled providers, default
-- first, for any existing user; nothing about the provider's secrets.
BEGIN;
SELECT plan(5);

CREATE TEMP TABLE t AS
SELECT
    chatd_test.user() AS usr,
    chatd_test.provider(p_api_key_env => 'SECRET_KEY_ENV') AS prov,
    chatd_test.provider() AS off_prov;

CREATE TEMP TABLE m AS
SELECT
    chatd_test.model_config(t.prov, p_model => 'b-model') AS plain,
    chatd_test.model_config(t.prov, p_model => 'a-default', p_is_default => TRUE) AS dflt,
    chatd_test.model_config(t.prov, p_model => 'disabled') AS disabled,
    chatd_test.model_config(t.off_prov, p_model => 'on-disabled-provider') AS off
FROM t;

UPDATE chatd.model_configs SET enabled = FALSE
WHERE id = (SELECT m.disabled FROM m);
UPDATE chatd.providers SET enabled = FALSE
WHERE id = (SELECT t.off_prov FROM t);

SELECT results_eq(
    $$SELECT l.id FROM chatd.list_models((SELECT t.usr FROM t)) AS l$$,
    $$SELECT m.dflt FROM m UNION ALL SELECT m.plain FROM m$$,
    'enabled models of enabled providers, the default first'
);

SELECT is(
    (
        SELECT l.input_price_per_mtok
        FROM chatd.list_models((SELECT t.usr FROM t)) AS l
        WHERE l.is_default
    ),
    1::numeric,
    'prices per million tokens are returned'
);

SELECT is(
    (
        SELECT count(*)
        FROM chatd.list_models((SELECT t.usr FROM t)) AS l
        WHERE to_jsonb(l)::text LIKE '%SECRET_KEY_ENV%'
    ),
    0::bigint,
    'nothing of the provider configuration but its name'
);

SELECT throws_ok(
    $$SELECT * FROM chatd.list_models(gen_random_uuid())$$,
    'CD002', NULL, 'an unknown user may not list models'
);

SELECT throws_ok(
    $$SELECT * FROM chatd.list_models(NULL)$$,
    'CD002', NULL, 'a NULL user may not list models'
);

SELECT finish();
ROLLBACK;
