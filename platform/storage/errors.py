"""One error type for storage problems, with one actionable line each.

S3 failures reach us as botocore exceptions whose text is long and generic
("An error occurred (SignatureDoesNotMatch) when calling the ListObjectsV2 operation: ...").
:func:`explain_s3_error` turns the few that users can fix themselves (endpoint down,
wrong keys, missing bucket, no permission) into one line that names the setting and
where its value came from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

if TYPE_CHECKING:
    from paralab.platform.storage.settings import S3Settings

CREDENTIAL_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                    "ExpiredToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed")
MISSING_BUCKET_CODES = ("NoSuchBucket",)
DENIED_CODES = ("AccessDenied", "AllAccessDisabled", "Forbidden")


class StorageError(RuntimeError):
    """A storage setting is wrong or the storage is unreachable; the message is one line.

    ``reason`` says which check failed, for callers that react differently to each:
    ``"unreachable"``, ``"credentials"``, ``"bucket"``, ``"denied"``, ``"setting"`` or
    ``"local"``.
    """

    def __init__(self, message: str, reason: str = "setting") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # keep `reason` when Ray pickles the error across processes
        return type(self), (str(self), self.reason)


def error_code(err: ClientError) -> str:
    """The S3 error code of a botocore ``ClientError`` (``"NoSuchBucket"``, ``"404"``, ...)."""
    return str(err.response.get("Error", {}).get("Code", ""))


def explain_s3_error(err: Exception, settings: S3Settings, bucket: str, prefix: str = "",
                     *, action: str = "access", source: str | None = None) -> StorageError | None:
    """A one-line :class:`StorageError` for a fixable S3 failure, or None for anything else.

    ``action`` is the verb used in the message ("list", "write", ...); ``source`` says which
    setting named the bucket (``storage.uri='s3://...'`` or ``env PARALAB_STORAGE=...``).
    """
    where = f"s3://{bucket}/{prefix}".rstrip("/")
    origin = source or f"storage.uri={where!r}"
    endpoint = settings.describe_endpoint()
    if isinstance(err, (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError)):
        return StorageError(
            f"cannot reach S3 endpoint {endpoint}: {_short(err)}; start the server "
            f"(`paralab stack up` for a local one) or fix {settings.endpoint_source}",
            "unreachable",
        )
    if isinstance(err, ReadTimeoutError):
        return StorageError(f"S3 endpoint {endpoint} accepted the connection but did not answer "
                            f"in time; is {settings.endpoint_source} an S3 server?", "unreachable")
    if isinstance(err, NoCredentialsError):
        return StorageError(no_credentials_message(where), "credentials")
    if not isinstance(err, ClientError):
        return None
    code = error_code(err)
    if code in CREDENTIAL_CODES:
        return StorageError(
            f"S3 rejected the credentials ({code}) at {endpoint}: check AWS_ACCESS_KEY_ID/"
            f"AWS_SECRET_ACCESS_KEY (credentials from {settings.credential_source()})",
            "credentials",
        )
    if code in MISSING_BUCKET_CODES or (code == "404" and err.operation_name == "HeadBucket"):
        return StorageError(
            f"bucket {bucket!r} does not exist at {endpoint} (from {origin}): create it with "
            f"`aws s3 mb s3://{bucket}{settings.cli_endpoint_flag()}` or let paralab create it "
            f"(--create-bucket, preflight(create_bucket=True))",
            "bucket",
        )
    if code in DENIED_CODES or code == "403":
        return StorageError(
            f"access denied to {action} {where} at {endpoint} (credentials from "
            f"{settings.credential_source()}): grant s3:ListBucket, s3:GetObject, s3:PutObject "
            f"and s3:DeleteObject on it",
            "denied",
        )
    return None


def no_credentials_message(where: str) -> str:
    """The message for "boto3 found no credentials at all"."""
    return (f"no S3 credentials found for storage.uri={where}: set AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")


def _short(err: BotoCoreError) -> str:
    """The OS-level reason of a connection failure ("connection refused"), briefly."""
    # botocore keeps the underlying urllib3/socket error in kwargs["error"].
    text = f"{err} {getattr(err, 'kwargs', {}).get('error', '')}"
    for marker in ("Connection refused", "timed out", "Name or service not known",
                   "No route to host", "Temporary failure in name resolution",
                   "Connection reset", "certificate verify failed"):
        if marker.lower() in text.lower():
            return marker.lower()
    return "could not connect"
