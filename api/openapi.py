"""The OpenAPI 3.1 description of the REST API, written by hand.

Limits are read from settings when the document is built, so it states the
ones this console enforces. tests/api/test_openapi.py checks that every URL of
api.urls and every method its view accepts is described here.
"""

from typing import Any

from django.conf import settings

from api.parsing import SERVICE_CONFIG_FIELDS, SERVICE_FIELDS
from api.serializers import service_status_name
from services.choices import ServiceStatus, VersionStatus


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _service_statuses() -> list[str]:
    return [service_status_name(status) for status in ServiceStatus.values]


def _schemas() -> dict[str, Any]:
    string_list = {"type": "array", "items": {"type": "string"}}
    timestamp = {"type": "integer", "description": "Milliseconds since the Unix epoch."}
    envs = {
        "description": "Environment variables of the containers: an object, or a list of {key, value} rows.",
        "oneOf": [
            {"type": "object", "additionalProperties": {"type": "string"}},
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"key": {"type": "string"}, "value": {"type": "string"}},
                    "required": ["key"],
                },
            },
        ],
    }
    return {
        "Error": {
            "type": "object",
            "properties": {
                "error_code": {"type": "string", "examples": ["RTS.4000"]},
                "error_msg": {"type": "string"},
                "errors": {
                    "type": "object",
                    "description": (
                        "Validation errors only: messages keyed by the request's field names, e.g. "
                        "`service_name`, `config[0].specification`; `__all__` for a rule about the whole request."
                    ),
                    "additionalProperties": string_list,
                },
            },
            "required": ["error_code", "error_msg"],
        },
        "TokenRequest": {
            "type": "object",
            "properties": {
                "username": {"type": "string"},
                "password": {"type": "string", "format": "password"},
                "name": {
                    "type": "string",
                    "maxLength": 64,
                    "description": "Defaults to 'API: ' and the client's User-Agent product, e.g. 'API: curl/8.5.0'.",
                },
                "expires_in_days": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": settings.ACCESS_TOKEN_MAX_DAYS,
                    "default": settings.ACCESS_TOKEN_DEFAULT_DAYS,
                },
            },
            "required": ["username", "password"],
        },
        "Token": {
            "type": "object",
            "properties": {
                "token": {"type": "string", "description": "Shown once; send it as X-Auth-Token or Bearer."},
                "name": {"type": "string"},
                "expires_at": {"type": "string", "format": "date-time"},
                "revoked": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Prefixes of the oldest live tokens revoked to keep within the per-user maximum.",
                },
            },
            "required": ["token", "name", "expires_at", "revoked"],
        },
        "ModelCreate": {
            "type": "object",
            "properties": {
                "model_name": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z][A-Za-z0-9_-]*$"},
                "model_version": {"type": "string", "pattern": r"^\d{1,3}\.\d{1,3}\.\d{1,3}$", "examples": ["1.0.0"]},
                "description": {"type": "string", "maxLength": 100},
                "image": {"type": "string", "maxLength": 255, "examples": ["my-model:1.0.0"]},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 8080},
                "health_path": {"type": "string", "default": "/health"},
                "predict_path": {"type": "string", "default": "/predict"},
                "websocket": {"type": "boolean", "default": False},
            },
            "required": ["model_name", "model_version", "image"],
        },
        "ModelCreated": {
            "type": "object",
            "properties": {"model_id": {"type": "integer"}},
            "required": ["model_id"],
        },
        "Model": {
            "type": "object",
            "description": "One version of an AI application.",
            "properties": {
                "model_id": {"type": "integer"},
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "model_status": {
                    "type": "string",
                    "enum": list(VersionStatus.values),
                    "description": "checking until an engine is found to have the image; only normal models deploy.",
                },
                "description": {"type": "string"},
                "image": {"type": "string"},
                "port": {"type": "integer"},
                "health_path": {"type": "string"},
                "predict_path": {"type": "string"},
                "websocket": {"type": "boolean"},
                "status_reason": {"type": "string"},
                "create_at": timestamp,
            },
        },
        "ModelList": {
            "type": "object",
            "properties": {"total_count": {"type": "integer"}, "models": {"type": "array", "items": _ref("Model")}},
        },
        "ServiceConfigRequest": {
            "type": "object",
            "properties": {
                "model_id": {"type": "integer", "description": "A model whose model_status is normal."},
                "weight": {"type": "integer", "minimum": 0, "maximum": 100, "default": 100},
                "specification": {"type": "string", "description": "See GET /services/specifications."},
                "instance_count": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": settings.MAX_INSTANCES_PER_VERSION,
                    "default": 1,
                },
                "envs": envs,
            },
            "required": ["model_id", "specification"],
        },
        "ServiceCreate": {
            "type": "object",
            "properties": {
                "service_name": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z][A-Za-z0-9_-]*$"},
                "description": {"type": "string", "maxLength": 100},
                "pool_name": {"type": "string", "description": "Default: the first public resource pool."},
                "config": {
                    "type": "array",
                    "minItems": 1,
                    "items": _ref("ServiceConfigRequest"),
                    "description": "The weights must add up to 100.",
                },
                "timeout_minutes": {
                    "type": "integer",
                    "minimum": settings.SERVICE_TIMEOUT_MIN_MINUTES,
                    "maximum": settings.SERVICE_TIMEOUT_MAX_MINUTES,
                    "default": settings.SERVICE_TIMEOUT_DEFAULT_MINUTES,
                },
                "websocket": {"type": "boolean", "default": False},
                "traffic_limit": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "maximum": 100_000,
                    "description": "At most this many calls per second (all gateway processes together); "
                    "the rest get 429. Not for WebSocket services. Default: no limit.",
                },
                "auto_stop_hours": {
                    "type": ["integer", "null"],
                    "enum": [1, 2, 4, 8, 24, None],
                    "description": "Stop the service by itself this many hours after it turns Running. Default: never.",
                },
                "multi_pool_lb": {
                    "type": "boolean",
                    "description": "Multi-pool load balancing: run half the instances in pool_name and half in "
                    "second_pool_name (both dedicated, of the same node specification); instance_count must be a "
                    "multiple of 2 and at least 2.",
                },
                "second_pool_name": {"type": "string", "description": "The second dedicated pool (multi_pool_lb)."},
            },
            "required": ["service_name", "config"],
        },
        "ServiceCreated": {
            "type": "object",
            "properties": {"service_id": {"type": "string", "format": "uuid"}, "service_name": {"type": "string"}},
            "required": ["service_id", "service_name"],
        },
        "ServiceConfig": {
            "type": "object",
            "properties": {
                "model_id": {"type": "integer"},
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "weight": {"type": "integer"},
                "specification": {"type": "string"},
                "instance_count": {"type": "integer"},
                "envs": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "Instance": {
            "type": "object",
            "properties": {
                "container_name": {"type": "string"},
                "host_port": {"type": ["integer", "null"]},
                "state": {"type": "string", "enum": ["pending", "created", "running", "exited", "missing", "stopped"]},
                "is_healthy": {"type": "boolean"},
                "model_id": {"type": "integer"},
            },
        },
        "Event": {
            "type": "object",
            "properties": {
                "time": timestamp,
                "level": {"type": "string", "enum": ["info", "warning", "error"]},
                "message": {"type": "string"},
                "detail": {"type": "string", "description": "e.g. the last log lines of a failed container"},
            },
        },
        "ServiceSummary": {
            "type": "object",
            "properties": {
                "service_id": {"type": "string", "format": "uuid"},
                "service_name": {"type": "string"},
                "description": {"type": "string"},
                "status": {
                    "type": "string",
                    "enum": _service_statuses(),
                    "description": "concerning is the console's Alarm: some instances are unhealthy.",
                },
                "pool_name": {"type": "string"},
                "second_pool_name": {"type": ["string", "null"], "description": "With multi-pool load balancing."},
                "access_address": {"type": "string", "format": "uri", "description": "Call the service here."},
                "config": {"type": "array", "items": _ref("ServiceConfig")},
                "invocation_times": {"type": "integer"},
                "failed_times": {"type": "integer"},
                "error_msg": {"type": "string", "description": "Why the service is in its status, if it says."},
                "timeout_minutes": {"type": "integer"},
                "websocket": {"type": "boolean"},
                "traffic_limit": {"type": ["integer", "null"]},
                "auto_stop_hours": {"type": ["integer", "null"]},
                "auto_stop_at": {**timestamp, "type": ["integer", "null"], "description": "When it stops by itself."},
                "create_at": timestamp,
            },
        },
        "Service": {
            "allOf": [
                _ref("ServiceSummary"),
                {
                    "type": "object",
                    "properties": {
                        "instances": {"type": "array", "items": _ref("Instance")},
                        "events": {
                            "type": "array",
                            "items": _ref("Event"),
                            "description": "The latest 200, newest first.",
                        },
                        "update_history": {
                            "type": "array",
                            "items": _ref("ServiceUpdate"),
                            "description": "The latest 50 changes of config or description, newest first.",
                        },
                    },
                },
            ]
        },
        "ServiceList": {
            "type": "object",
            "properties": {
                "total_count": {"type": "integer"},
                "services": {"type": "array", "items": _ref("ServiceSummary")},
            },
        },
        "ServiceStatusUpdate": {
            "type": "object",
            "properties": {"status": {"type": "string", "enum": ["stopped", "running"]}},
            "required": ["status"],
        },
        "ServiceChange": {
            "type": "object",
            "description": "What to change; what is left out stays. New weights alone take effect at once; "
            "any other change of config is a live update: the service turns upgrading, the new instances pass "
            "their health checks before traffic moves to them, the old ones are removed after their calls in "
            "flight finish, and an update that is not healthy within the timeout is rolled back.",
            "properties": {
                "description": {"type": "string", "maxLength": 100},
                "config": {
                    "type": "array",
                    "minItems": 1,
                    "items": _ref("ServiceConfigRequest"),
                    "description": "Every version the service is to run, as when deploying: weights add up to "
                    "100, each version once, all of the service's AI application.",
                },
                "websocket": {
                    "type": "boolean",
                    "description": "Fixed at deployment: only its current value is accepted.",
                },
            },
        },
        "ServiceUpdate": {
            "type": "object",
            "properties": {
                "update_id": {"type": "integer"},
                "requested_by": {"type": ["string", "null"]},
                "create_at": timestamp,
                "finish_at": {**timestamp, "type": ["integer", "null"]},
                "outcome": {"type": "string", "enum": ["in_progress", "succeeded", "rolled_back"]},
                "reason": {"type": "string", "description": "Why it was rolled back."},
                "before": _ref("ServiceSide"),
                "after": _ref("ServiceSide"),
            },
        },
        "ServiceSide": {
            "type": "object",
            "properties": {
                "description": {"type": "string"},
                "config": {"type": "array", "items": _ref("ServiceConfig")},
            },
        },
        "Specification": {
            "type": "object",
            "properties": {
                "specification": {"type": "string", "description": "The code to send as config[].specification."},
                "display_en": {"type": "string"},
                "cpu": {"type": "number", "description": "vCPUs"},
                "memory": {"type": "integer", "description": "MiB"},
                "gpu": {"type": "integer"},
                "is_free": {"type": "boolean"},
                "spec_status": {"type": "string", "enum": ["available", "unavailable"]},
                "reason": {"type": "string", "description": "Why an unavailable specification cannot be used."},
            },
        },
        "SpecificationList": {
            "type": "object",
            "properties": {
                "pool_name": {"type": ["string", "null"]},
                "specifications": {"type": "array", "items": _ref("Specification")},
            },
        },
    }


def _responses() -> dict[str, Any]:
    error = _ref("Error")
    return {
        "ValidationFailed": _json(
            error,
            "RTS.4000: the request breaks a rule; `errors` names each field. RTS.4001: the body is not a JSON object.",
        ),
        "Unauthorized": _json(error, "RTS.4010: no token; RTS.4011: the token is invalid, expired or revoked."),
        "NotFound": _json(error, "RTS.4040: no such object, or it belongs to another user."),
        "MethodNotAllowed": _json(error, "RTS.4050: the path does not accept this method; see the Allow header."),
        "Conflict": _json(error, "RTS.4090: the action makes no sense in the object's current state."),
        "TooLarge": _json(error, "RTS.4130: the request body is too large."),
    }


def _id_parameter(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _paths() -> dict[str, Any]:
    common = {"401": _error("Unauthorized"), "405": _error("MethodNotAllowed")}
    with_body = {**common, "400": _error("ValidationFailed"), "413": _error("TooLarge")}
    model_id = _id_parameter("model_id", {"type": "integer"})
    service_id = _id_parameter("service_id", {"type": "string", "format": "uuid"})
    return {
        "/auth/tokens": {
            "post": {
                "operationId": "createToken",
                "summary": "Create an API token with a username and password",
                "security": [],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("TokenRequest")}}},
                "responses": {
                    "201": {
                        **_json(_ref("Token"), "The token, also in the X-Subject-Token header."),
                        "headers": {"X-Subject-Token": {"schema": {"type": "string"}}},
                    },
                    "400": _error("ValidationFailed"),
                    "401": _json(_ref("Error"), "RTS.4012: the username or password is incorrect."),
                    "405": _error("MethodNotAllowed"),
                },
            }
        },
        "/models": {
            "get": {
                "operationId": "listModels",
                "summary": "List your models (AI application versions), newest first",
                "responses": {"200": _json(_ref("ModelList"), "Your models."), **common},
            },
            "post": {
                "operationId": "createModel",
                "summary": "Register a model from a container image; it is checked, then normal or failed",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ModelCreate")}}},
                "responses": {"201": _json(_ref("ModelCreated"), "Registered, model_status checking."), **with_body},
            },
        },
        "/models/{model_id}": {
            "parameters": [model_id],
            "get": {
                "operationId": "showModel",
                "summary": "Show one model",
                "responses": {"200": _json(_ref("Model"), "The model."), "404": _error("NotFound"), **common},
            },
            "delete": {
                "operationId": "deleteModel",
                "summary": "Delete a model that no service uses",
                "responses": {
                    "204": {"description": "Deleted."},
                    "404": _error("NotFound"),
                    "409": _error("Conflict"),
                    **common,
                },
            },
        },
        "/services": {
            "get": {
                "operationId": "listServices",
                "summary": "List your real-time services, newest first",
                "responses": {"200": _json(_ref("ServiceList"), "Your services."), **common},
            },
            "post": {
                "operationId": "createService",
                "summary": "Deploy a real-time service; it starts as deploying",
                "description": (
                    "Checked by the same rules, with the same messages, as the console's Deploy page. "
                    "Error keys: "
                    + ", ".join([*SERVICE_FIELDS.values(), *(f"config[n].{f}" for f in SERVICE_CONFIG_FIELDS.values())])
                    + "."
                ),
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ServiceCreate")}}},
                "responses": {"201": _json(_ref("ServiceCreated"), "Stored as deploying."), **with_body},
            },
        },
        "/services/specifications": {
            "get": {
                "operationId": "listSpecifications",
                "summary": "List the specifications (flavors) and whether each can be deployed on a pool now",
                "parameters": [
                    {
                        "name": "pool_name",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "Default: the first public resource pool.",
                    }
                ],
                "responses": {
                    "200": _json(_ref("SpecificationList"), "Every specification, available or not with the reason."),
                    "404": _error("NotFound"),
                    **common,
                },
            }
        },
        "/services/{service_id}": {
            "parameters": [service_id],
            "get": {
                "operationId": "showService",
                "summary": "Show a service with its instances and events",
                "responses": {"200": _json(_ref("Service"), "The service."), "404": _error("NotFound"), **common},
            },
            "put": {
                "operationId": "updateService",
                "summary": 'Stop ({"status": "stopped"}) or start ({"status": "running"}) a service, or change '
                "its config and/or description",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"oneOf": [_ref("ServiceStatusUpdate"), _ref("ServiceChange")]}}
                    },
                },
                "responses": {
                    "200": _json(_ref("Service"), "The service, now stopping, deploying, upgrading or changed."),
                    "404": _error("NotFound"),
                    "409": _error("Conflict"),
                    **with_body,
                },
            },
            "delete": {
                "operationId": "deleteService",
                "summary": "Delete a service and its containers",
                "responses": {
                    "204": {"description": "Deleting; the service disappears once its containers are removed."},
                    "404": _error("NotFound"),
                    "409": _error("Conflict"),
                    **common,
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": _json({"type": "object"}, "OpenAPI 3.1"),
                    "405": _error("MethodNotAllowed"),
                },
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Real-Time Services API",
            "version": "1",
            "description": (
                "Deploy model-server containers as real-time inference services. Field names follow "
                "ModelArts' API, where a model is one version of an AI application. Call a running service "
                "at its access_address on the gateway. Errors are JSON: {error_code, error_msg}."
            ),
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"XAuthToken": []}, {"Bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "XAuthToken": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": _schemas(),
            "responses": _responses(),
        },
    }
