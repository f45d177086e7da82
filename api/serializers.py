"""Shape rows into the API's JSON, with ModelArts' field names. Plain functions
of already-fetched rows: none of them queries the database, provided the rows
come from the selectors named in each docstring."""

from datetime import datetime
from typing import Any

from django.conf import settings

from pools.models import ResourcePool
from pools.selectors import FlavorOption
from services.choices import ConfigPhase, ServiceStatus
from services.contract import infer_url
from services.models import (
    AIApplicationVersion,
    Instance,
    Service,
    ServiceEvent,
    ServiceUpdate,
    ServiceVersionConfig,
)

# ModelArts says "concerning" where the console says Alarm; every other status
# is its value in lower case.
_STATUS_NAMES: dict[str, str] = {ServiceStatus.ALARM: "concerning"}


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def service_status_name(status: str) -> str:
    return _STATUS_NAMES.get(status, str(status).lower())


def access_address(service: Service) -> str:
    return infer_url(settings.GATEWAY_URL, service.id)


def model_data(version: AIApplicationVersion) -> dict[str, Any]:
    """One AI application version; needs `application` selected."""
    return {
        "model_id": version.id,
        "model_name": version.application.name,
        "model_version": version.version,
        "model_status": version.status,
        "description": version.application.description,
        "image": version.image,
        "port": version.container_port,
        "health_path": version.health_path,
        "predict_path": version.predict_path,
        "websocket": version.is_websocket,
        "status_reason": version.status_reason,
        "create_at": epoch_ms(version.created_at),
    }


def config_data(config: ServiceVersionConfig) -> dict[str, Any]:
    """Needs `app_version__application` and `flavor` selected."""
    return config.summary()


def update_data(update: ServiceUpdate) -> dict[str, Any]:
    """One entry of a service's update history; needs `requested_by` selected."""
    return {
        "update_id": update.id,
        "requested_by": update.requested_by.get_username() if update.requested_by else None,
        "create_at": epoch_ms(update.created_at),
        "finish_at": epoch_ms(update.finished_at) if update.finished_at else None,
        "outcome": update.outcome,
        "reason": update.reason,
        "before": update.before,
        "after": update.after,
    }


def instance_data(instance: Instance) -> dict[str, Any]:
    """Needs `config` selected."""
    return {
        "container_name": instance.container_name,
        "host_port": instance.host_port,
        "state": instance.state,
        "is_healthy": instance.is_healthy,
        "model_id": instance.config.app_version_id,
    }


def event_data(event: ServiceEvent) -> dict[str, Any]:
    return {
        "time": epoch_ms(event.created_at),
        "level": event.level,
        "message": event.message,
        "detail": event.detail,
    }


def service_summary(service: Service) -> dict[str, Any]:
    """A service as the list shows it; needs a row from services.selectors.service_list_for."""
    return {
        "service_id": str(service.id),
        "service_name": service.name,
        "description": service.description,
        "status": service_status_name(service.status),
        "pool_name": service.pool.name,
        "second_pool_name": service.second_pool.name if service.second_pool is not None else None,
        "access_address": access_address(service),
        # A live update's new configurations join once traffic moved to them.
        "config": [config_data(config) for config in service.configs.all() if config.phase == ConfigPhase.SERVING],
        "invocation_times": service.invocation_times,
        "failed_times": service.failed_times,
        "error_msg": service.status_reason,
        "timeout_minutes": service.timeout_minutes,
        "websocket": service.is_websocket,
        "traffic_limit": service.traffic_limit,
        "auto_stop_hours": service.auto_stop_hours,
        "auto_stop_at": epoch_ms(service.auto_stop_at) if service.auto_stop_at else None,
        "create_at": epoch_ms(service.created_at),
    }


def service_data(service: Service) -> dict[str, Any]:
    """A service with its instances and events (newest first); needs a row
    from services.selectors.service_detail_for."""
    return {
        **service_summary(service),
        "instances": [instance_data(instance) for instance in service.instance_rows],
        "events": [event_data(event) for event in service.event_rows],
        "update_history": [update_data(update) for update in service.update_rows],
    }


def specification_data(option: FlavorOption) -> dict[str, Any]:
    flavor = option.flavor
    return {
        "specification": flavor.code,
        "display_en": flavor.display_name,
        # A number, not the Decimal's string: 0.5 vCPU is a valid limit.
        "cpu": float(flavor.cpus),
        "memory": flavor.memory_mib,
        "gpu": flavor.gpus,
        "is_free": flavor.is_free,
        "spec_status": "available" if option.is_available else "unavailable",
        "reason": option.reason,
    }


def specifications_data(pool: ResourcePool | None, options: list[FlavorOption]) -> dict[str, Any]:
    return {
        "pool_name": pool.name if pool else None,
        "specifications": [specification_data(option) for option in options],
    }
