"""Triggers that tell the gateway what changed in the rows it routes by.

Each gateway process LISTENs on `rts_routing` and re-reads only what a
notification names (see services/contract.py (RoutingNotice) for the payloads, and
gateway/keeper.py for how they are applied). NOTIFY is transactional: a
gateway hears of a change when it commits, in commit order.
"""

from django.conf import settings
from django.db import migrations

TABLES = (
    "services_service",
    "services_instance",
    "services_serviceversionconfig",
    "services_aiapplicationversion",
    "access_accesstoken",
    "access_appcode",
    "auth_user",
)

FUNCTION = """
CREATE OR REPLACE FUNCTION rts_routing_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed jsonb;
BEGIN
    -- TG_ARGV: the payload's kind, and the column whose value names what changed.
    IF TG_LEVEL = 'STATEMENT' THEN
        -- TRUNCATE: no rows to name, so every gateway reloads everything.
        PERFORM pg_notify('rts_routing', '*');
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        changed := to_jsonb(OLD);
    ELSE
        changed := to_jsonb(NEW);
    END IF;
    PERFORM pg_notify('rts_routing', TG_ARGV[0] || ':' || (changed ->> TG_ARGV[1]));
    RETURN NULL;
END
$$;
"""


def row_triggers(table: str, kind: str, column: str, watched: tuple[str, ...], *, on_write: bool = True) -> str:
    """One trigger for inserts and deletes, one for updates of the watched columns that change them."""
    sql = []
    if on_write:
        sql.append(
            f"CREATE TRIGGER rts_routing_write AFTER INSERT OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION rts_routing_notify('{kind}', '{column}');"
        )
    changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in watched)
    sql.append(
        f"CREATE TRIGGER rts_routing_update AFTER UPDATE OF {', '.join(watched)} ON {table} "
        f"FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION rts_routing_notify('{kind}', '{column}');"
    )
    return "\n".join(sql)


FORWARD = "\n".join(
    [
        FUNCTION,
        row_triggers("services_service", "s", "id", ("status", "owner_id")),
        row_triggers("services_instance", "s", "service_id", ("is_healthy", "host_port", "config_id")),
        row_triggers("services_serviceversionconfig", "s", "service_id", ("weight", "position", "app_version_id")),
        row_triggers("services_aiapplicationversion", "v", "id", ("predict_path",), on_write=False),
        row_triggers("access_accesstoken", "t", "token_hash", ("revoked_at", "expires_at", "owner_id")),
        row_triggers("access_appcode", "c", "code_hash", ("revoked_at", "service_id")),
        row_triggers("auth_user", "u", "id", ("is_active",), on_write=False),
        *(
            f"CREATE TRIGGER rts_routing_truncate AFTER TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION rts_routing_notify();"
            for table in TABLES
        ),
    ]
)

REVERSE = "\n".join(
    [
        *(
            f"DROP TRIGGER IF EXISTS {name} ON {table};"
            for table in TABLES
            for name in ("rts_routing_write", "rts_routing_update", "rts_routing_truncate")
        ),
        "DROP FUNCTION IF EXISTS rts_routing_notify();",
    ]
)


class Migration(migrations.Migration):
    dependencies = [
        ("services", "0004_instance_state_exited"),
        ("access", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunSQL(FORWARD, REVERSE)]
