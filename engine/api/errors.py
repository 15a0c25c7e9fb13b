"""API errors in IoTDA's shape: an HTTP status plus `{"error_code", "error_msg"}`.

Codes and messages are IoTDA's own (API reference 1.7.3) so IoTDA clients
and SDKs recognise them; `detail` adds what this engine knows (which field is
wrong and why) to the message. A detail never contains a secret: validation
messages come from `engine.config`, which builds them without input values.
"""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, detail: str = "") -> None:
        self.status = status
        self.code = code
        self.message = f"{message} {detail}".strip() if detail else message
        super().__init__(f"{status} {code}: {self.message}")

    def body(self) -> dict[str, str]:
        return {"error_code": self.code, "error_msg": self.message}


# ------------------------------------------------------------------ 4xx of every endpoint


def invalid_input(detail: str = "") -> ApiError:
    return ApiError(400, "IOTDA.000006", "Invalid input data.", detail)


def bad_format(detail: str = "") -> ApiError:
    return ApiError(
        400, "IOTDA.000008",
        "Invalid input. The request format is invalid. For details, see the error message.", detail,
    )


def bad_limit() -> ApiError:
    return ApiError(400, "IOTDA.000017", "Invalid input. The specified parameter 'limit' is out of range.")


def bad_marker() -> ApiError:
    return ApiError(400, "IOTDA.000018", "Invalid input. The specified parameter 'marker' is out of range.")


def unauthorized() -> ApiError:
    # Deliberately the same for every cause (unknown token, bad signature,
    # stale date, wrong project): a caller learns nothing about which.
    return ApiError(401, "IOTDA.000002", "Authentication failed.")


def path_not_found() -> ApiError:
    return ApiError(404, "IOTDA.000029", "Invalid input. The path does not exist.")


def method_not_allowed() -> ApiError:
    return ApiError(405, "IOTDA.000019", "Method not allowed.")


def too_large(limit: int) -> ApiError:
    return ApiError(
        413, "IOTDA.014116", "Invalid input. The size of request body has exceeded the upper limit.",
        f"(at most {limit} bytes)",
    )


def unsupported_media_type() -> ApiError:
    return ApiError(
        415, "IOTDA.000036",
        "Invalid input. The Content-Type is missing or not supported in the request header.",
    )


def rate_limited(rate: float) -> ApiError:
    # IoTDA answers this code with 403; 429 is what generic HTTP clients and
    # proxies understand as "slow down", so it is used here.
    return ApiError(429, "IOTDA.000023", f"Request frequency reached the upper limit {rate:g}/s.")


def internal() -> ApiError:
    return ApiError(500, "IOTDA.000001", "Internal server error.")


# ------------------------------------------------------------------ per resource kind

# kind -> (status 404 code and message, 400 code and message for invalid input)
NOT_FOUND = {
    "rules": ("IOTDA.010002", "The rule does not exist."),
    "actions": ("IOTDA.010020", "The rule action does not exist."),
    "backlog_policies": ("IOTDA.010043", "The stack policy does not exist."),
    "flowcontrol_policies": ("IOTDA.010046", "The flow control policy does not exist."),
}

INVALID = {
    "rules": ("IOTDA.010000", "Invalid input for this rule."),
    "actions": ("IOTDA.010005", "Invalid parameter in the rule action."),
    "backlog_policies": ("IOTDA.010045", "Invalid input. The policy parameter is invalid."),
    "flowcontrol_policies": ("IOTDA.010048", "Invalid input. The policy parameter is invalid."),
}

DUPLICATE_ID = {
    "rules": ("IOTDA.010006", "Duplicate rule condition ID."),
    "actions": ("IOTDA.010007", "Duplicate rule action ID."),
    "backlog_policies": ("IOTDA.010044", "Invalid input. The stack policy already exists."),
    "flowcontrol_policies": ("IOTDA.010047", "Invalid input. The flow control policy is duplicated."),
}


def not_found(kind: str) -> ApiError:
    code, message = NOT_FOUND[kind]
    return ApiError(404, code, message)


def invalid(kind: str, detail: str) -> ApiError:
    code, message = INVALID[kind]
    return ApiError(400, code, message, detail)


def rule_text_invalid(detail: str) -> ApiError:
    return ApiError(400, "IOTDA.010004", "Invalid parameter in the rule condition.", detail)


def duplicate_id(kind: str) -> ApiError:
    code, message = DUPLICATE_ID[kind]
    return ApiError(400, code, message)


def rule_has_actions() -> ApiError:
    return ApiError(
        403, "IOTDA.010037", "The rule cannot be deleted because actions exist in the rule."
    )


def quota_exceeded(what: str, limit: int) -> ApiError:
    if what == "flowcontrol_policies":
        return ApiError(
            403, "IOTDA.010049",
            f"Operation not allowed. Total number of flow control policies exceeds the upper limit ({limit}).",
        )
    return ApiError(403, "IOTDA.010003", "The number of rules has reached the upper limit.",
                    f"(at most {limit} {what.replace('_', ' ')})")
