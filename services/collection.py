"""Data collection's worker side: the retention purge run by the beat schedule.

The gateway writes the records (gateway/store.py insert_collected_records);
the console's rule and reads are in services.actions and services.selectors.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

from services.models import DataCollectionRecord, DataCollectionRule

# The services that have records and no longer exist. The records' service has
# no database constraint (gateway/store.py), so a record flushed just after its
# service was deleted stays behind. The distinct service ids are read by
# skipping through the (service, id) index one service at a time, so this
# costs a few index lookups per service, not a scan of every record.
SERVICES_GONE_SQL = """
WITH RECURSIVE ids AS (
  (SELECT service_id FROM services_datacollectionrecord ORDER BY service_id LIMIT 1)
  UNION ALL
  SELECT (SELECT r.service_id FROM services_datacollectionrecord r
          WHERE r.service_id > ids.service_id ORDER BY r.service_id LIMIT 1)
  FROM ids WHERE ids.service_id IS NOT NULL
)
SELECT service_id FROM ids
WHERE service_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM services_service s WHERE s.id = ids.service_id)
"""


def collected_records_purge(*, now: datetime | None = None) -> int:
    """Delete every record beyond its service's retention: older than keep_days,
    and all but the newest keep_records; and every record of a service that is
    gone. Returns how many went. Safe to repeat and to run beside the gateway's
    inserts: each delete is one statement on one service's records, by index."""
    now = now or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(SERVICES_GONE_SQL)
        gone = [row[0] for row in cursor.fetchall()]
    deleted = DataCollectionRecord.objects.filter(service_id__in=gone).delete()[0] if gone else 0
    for rule in DataCollectionRule.objects.only("service_id", "keep_days", "keep_records").order_by("service_id"):
        records = DataCollectionRecord.objects.filter(service_id=rule.service_id)
        if rule.keep_days:
            count, _ = records.filter(created_at__lt=now - timedelta(days=rule.keep_days)).delete()
            deleted += count
        if rule.keep_records:
            # The newest record beyond the limit; it and all older ones go.
            first_beyond = list(
                records.order_by("-id").values_list("id", flat=True)[rule.keep_records : rule.keep_records + 1]
            )
            if first_beyond:
                count, _ = records.filter(id__lte=first_beyond[0]).delete()
                deleted += count
    return deleted
