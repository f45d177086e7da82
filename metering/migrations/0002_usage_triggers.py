"""The triggers that write usage (metering.models).

Apart from 0001 because the partial unique indexes that the triggers' ON
CONFLICT clauses name are created only at the end of the migration that
creates the tables, after any RunSQL in it."""

from django.db import migrations

# Usage is written by the database itself, in the statement that changes the
# row it describes, so no writer of instances or nodes (the lifecycle's
# QuerySet.update() calls, the reconcile loop, a cascade, the admin, a psql
# session) can forget to meter. Every trigger calls one of two functions that
# make a thing's open interval match its row as it is now: close the open
# interval, then open a new one if the row counts (an instance Running on a
# node of a public pool; a node of a dedicated pool). A change that moves what
# an interval bills (flavor, node, pool, owner) thus splits it there.
#
# Times are clock_timestamp(): the moment of the row change itself. now() is
# the start of the transaction, which would date a change made late in a long
# transaction (or every change inside one test transaction) too early.
FORWARD = """
CREATE OR REPLACE FUNCTION metering_instances_reopen(instance_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    changed_at timestamptz := clock_timestamp();
BEGIN
    UPDATE metering_instanceusage SET ended_at = GREATEST(started_at, changed_at)
    WHERE instance_id = ANY (instance_ids) AND ended_at IS NULL;
    INSERT INTO metering_instanceusage
        (instance_id, service_id, service_name, owner_id, pool_id, pool_name,
         flavor_code, cpus, memory_mib, gpus, started_at)
    SELECT i.id, s.id, s.name, s.owner_id, p.id, p.name, f.code, f.cpus, f.memory_mib, f.gpus, changed_at
    FROM services_instance i
    JOIN services_service s ON s.id = i.service_id
    JOIN services_serviceversionconfig c ON c.id = i.config_id
    JOIN pools_flavor f ON f.id = c.flavor_id
    JOIN pools_node n ON n.id = i.node_id
    JOIN pools_resourcepool p ON p.id = n.pool_id
    WHERE i.id = ANY (instance_ids) AND i.state = 'running' AND p.is_public
    ON CONFLICT (instance_id) WHERE ended_at IS NULL DO NOTHING;
END
$$;

CREATE OR REPLACE FUNCTION metering_nodes_reopen(node_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    changed_at timestamptz := clock_timestamp();
BEGIN
    UPDATE metering_nodeusage SET ended_at = GREATEST(started_at, changed_at)
    WHERE node_id = ANY (node_ids) AND ended_at IS NULL;
    INSERT INTO metering_nodeusage (node_id, node_name, pool_id, pool_name, owner_id, started_at)
    SELECT n.id, n.name, p.id, p.name, p.owner_id, changed_at
    FROM pools_node n
    JOIN pools_resourcepool p ON p.id = n.pool_id
    WHERE n.id = ANY (node_ids) AND NOT p.is_public AND p.owner_id IS NOT NULL
    ON CONFLICT (node_id) WHERE ended_at IS NULL DO NOTHING;
END
$$;

-- On services_instance: the row's own interval.
CREATE OR REPLACE FUNCTION metering_instance_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        -- TRUNCATE: every instance is gone.
        UPDATE metering_instanceusage SET ended_at = GREATEST(started_at, clock_timestamp()) WHERE ended_at IS NULL;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM metering_instances_reopen(ARRAY[OLD.id]);
    ELSE
        PERFORM metering_instances_reopen(ARRAY[NEW.id]);
    END IF;
    RETURN NULL;
END
$$;

-- On a row instances refer to (TG_ARGV[0] names their column): the intervals
-- of its Running instances, when it changes what they bill.
CREATE OR REPLACE FUNCTION metering_instances_of_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'SELECT metering_instances_reopen(ARRAY(SELECT id FROM services_instance WHERE %I = $1 AND state = ''running''))',
        TG_ARGV[0]
    ) USING NEW.id;
    RETURN NULL;
END
$$;

-- On pools_node: the node's own interval, and, when it moves to another
-- pool, its instances' (public or not may have changed).
CREATE OR REPLACE FUNCTION metering_node_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        UPDATE metering_nodeusage SET ended_at = GREATEST(started_at, clock_timestamp()) WHERE ended_at IS NULL;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM metering_nodes_reopen(ARRAY[OLD.id]);
    ELSE
        PERFORM metering_nodes_reopen(ARRAY[NEW.id]);
        IF TG_OP = 'UPDATE' THEN
            PERFORM metering_instances_reopen(
                ARRAY(SELECT id FROM services_instance WHERE node_id = NEW.id AND state = 'running'));
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- On pools_resourcepool: a pool turning public or dedicated, or changing
-- hands, moves both its nodes' and its instances' metering.
CREATE OR REPLACE FUNCTION metering_pool_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM metering_nodes_reopen(ARRAY(SELECT id FROM pools_node WHERE pool_id = NEW.id));
    PERFORM metering_instances_reopen(ARRAY(
        SELECT i.id FROM services_instance i JOIN pools_node n ON n.id = i.node_id
        WHERE n.pool_id = NEW.id AND i.state = 'running'));
    RETURN NULL;
END
$$;

CREATE TRIGGER metering_instance_insert AFTER INSERT ON services_instance
FOR EACH ROW WHEN (NEW.state = 'running') EXECUTE FUNCTION metering_instance_track();
CREATE TRIGGER metering_instance_update AFTER UPDATE OF state, service_id, config_id, node_id ON services_instance
FOR EACH ROW WHEN (
    (OLD.state = 'running' OR NEW.state = 'running')
    AND (OLD.state IS DISTINCT FROM NEW.state OR OLD.service_id IS DISTINCT FROM NEW.service_id
         OR OLD.config_id IS DISTINCT FROM NEW.config_id OR OLD.node_id IS DISTINCT FROM NEW.node_id)
) EXECUTE FUNCTION metering_instance_track();
-- Unconditional: whatever the row said last, nothing of it runs any more.
CREATE TRIGGER metering_instance_delete AFTER DELETE ON services_instance
FOR EACH ROW EXECUTE FUNCTION metering_instance_track();
CREATE TRIGGER metering_instance_truncate AFTER TRUNCATE ON services_instance
FOR EACH STATEMENT EXECUTE FUNCTION metering_instance_track();

CREATE TRIGGER metering_config_flavor AFTER UPDATE OF flavor_id ON services_serviceversionconfig
FOR EACH ROW WHEN (OLD.flavor_id IS DISTINCT FROM NEW.flavor_id)
EXECUTE FUNCTION metering_instances_of_track('config_id');
CREATE TRIGGER metering_service_owner AFTER UPDATE OF owner_id ON services_service
FOR EACH ROW WHEN (OLD.owner_id IS DISTINCT FROM NEW.owner_id)
EXECUTE FUNCTION metering_instances_of_track('service_id');

CREATE TRIGGER metering_node_insert AFTER INSERT ON pools_node
FOR EACH ROW EXECUTE FUNCTION metering_node_track();
CREATE TRIGGER metering_node_update AFTER UPDATE OF pool_id ON pools_node
FOR EACH ROW WHEN (OLD.pool_id IS DISTINCT FROM NEW.pool_id) EXECUTE FUNCTION metering_node_track();
CREATE TRIGGER metering_node_delete AFTER DELETE ON pools_node
FOR EACH ROW EXECUTE FUNCTION metering_node_track();
CREATE TRIGGER metering_node_truncate AFTER TRUNCATE ON pools_node
FOR EACH STATEMENT EXECUTE FUNCTION metering_node_track();

CREATE TRIGGER metering_pool_change AFTER UPDATE OF is_public, owner_id ON pools_resourcepool
FOR EACH ROW WHEN (OLD.is_public IS DISTINCT FROM NEW.is_public OR OLD.owner_id IS DISTINCT FROM NEW.owner_id)
EXECUTE FUNCTION metering_pool_track();

-- What already runs counts from now: when it started is not known.
SELECT metering_instances_reopen(ARRAY(SELECT id FROM services_instance WHERE state = 'running'));
SELECT metering_nodes_reopen(ARRAY(SELECT id FROM pools_node));
"""

TRIGGERS = (
    ("services_instance", "metering_instance_insert"),
    ("services_instance", "metering_instance_update"),
    ("services_instance", "metering_instance_delete"),
    ("services_instance", "metering_instance_truncate"),
    ("services_serviceversionconfig", "metering_config_flavor"),
    ("services_service", "metering_service_owner"),
    ("pools_node", "metering_node_insert"),
    ("pools_node", "metering_node_update"),
    ("pools_node", "metering_node_delete"),
    ("pools_node", "metering_node_truncate"),
    ("pools_resourcepool", "metering_pool_change"),
)
FUNCTIONS = (
    "metering_pool_track()",
    "metering_node_track()",
    "metering_instances_of_track()",
    "metering_instance_track()",
    "metering_nodes_reopen(bigint[])",
    "metering_instances_reopen(bigint[])",
)
REVERSE = "\n".join(
    [
        *(f"DROP TRIGGER IF EXISTS {name} ON {table};" for table, name in TRIGGERS),
        *(f"DROP FUNCTION IF EXISTS {function};" for function in FUNCTIONS),
    ]
)


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0001_initial"),
        ("services", "0008_data_collection"),
        ("pools", "0002_flavor_field_validators"),
    ]

    operations = [migrations.RunSQL(FORWARD, REVERSE)]
