"""Data collection's worker side: the retention purge run by the beat schedule.

The gateway writes the records (gateway/store.py insert_collected_records);
the console's rule and reads are in services.actions and services.selectors.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from services.models import DataCollectionRecord, DataCollectionRule


def collected_records_purge(*, now: datetime | None = None) -> int:
    """Delete every record beyond its service's retention: older than keep_days,
    and all but the newest keep_records. Returns how many went. Safe to repeat
    and to run beside the gateway's inserts: each delete is one statement on
    one service's records, by index."""
    now = now or timezone.now()
    deleted = 0
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
