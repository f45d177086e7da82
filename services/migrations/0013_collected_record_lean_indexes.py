# The collected records' indexes cost every collected call's insert: the
# configuration's goes, and the purge by days reads a BRIN index.

import django.contrib.postgres.indexes
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("services", "0012_collected_record_service_no_constraint"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="datacollectionrecord",
            name="collected_service_created",
        ),
        migrations.AlterField(
            model_name="datacollectionrecord",
            name="config",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="collected_records",
                to="services.serviceversionconfig",
            ),
        ),
        # Django leaves a foreign key's index in place when db_index turns off
        # on a key without a constraint; its name is Django's, the same everywhere.
        migrations.RunSQL(
            'DROP INDEX IF EXISTS "services_datacollectionrecord_config_id_627ff9d8"',
            reverse_sql='CREATE INDEX IF NOT EXISTS "services_datacollectionrecord_config_id_627ff9d8" '
            'ON "services_datacollectionrecord" ("config_id")',
        ),
        migrations.AddIndex(
            model_name="datacollectionrecord",
            index=django.contrib.postgres.indexes.BrinIndex(fields=["created_at"], name="collected_created_brin"),
        ),
    ]
