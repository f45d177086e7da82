# One B-tree fewer for every collected call's insert: the records' primary key
# becomes (service, id), which is also the index the tab, the export and the
# purge read by, and the separate unique index on id alone goes. Nothing looks a
# record up by id alone; ids stay unique because only the identity column's
# sequence makes them. Django's own state keeps `id` as the model's primary
# key and the (service, id) index by its name (the key's index carries it), so
# the model and its queries are unchanged.

from django.db import migrations

TABLE = "services_datacollectionrecord"


class Migration(migrations.Migration):
    dependencies = [
        ("services", "0013_collected_record_lean_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    [
                        f"ALTER TABLE {TABLE} DROP CONSTRAINT {TABLE}_pkey",
                        "DROP INDEX collected_service_id",
                        f"ALTER TABLE {TABLE} ADD CONSTRAINT collected_service_id PRIMARY KEY (service_id, id)",
                    ],
                    reverse_sql=[
                        f"ALTER TABLE {TABLE} DROP CONSTRAINT collected_service_id",
                        f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (id)",
                        f"CREATE INDEX collected_service_id ON {TABLE} (service_id, id)",
                    ],
                )
            ],
            state_operations=[],
        )
    ]
