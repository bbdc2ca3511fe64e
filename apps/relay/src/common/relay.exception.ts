import { ErrorCode, type DeviceMismatch, type ErrorBody, type StaleDeviceList } from '@chat/protocol';

/** Structured fields of some refusals, beside `details`. */
export interface RelayExceptionFields {
  /** For `MISMATCHED_DEVICES`. */
  mismatched?: DeviceMismatch[];
  /** For `STALE_DEVICES`. */
  stale?: StaleDeviceList[];
}

/**
 * The one exception type of the relay. Services throw it with a protocol
 * `ErrorCode`; the HTTP filter maps the code to a status, the WS filter to an
 * `error` frame. Tests assert `code`, never `message`.
 */
export class RelayException extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: string[],
    /** Seconds, for `RATE_LIMITED`. */
    readonly retryAfter?: number,
    readonly fields: RelayExceptionFields = {},
  ) {
    super(message);
    this.name = 'RelayException';
  }

  toBody(): ErrorBody {
    return {
      code: this.code,
      message: this.message,
      ...(this.details !== undefined && { details: this.details }),
      ...(this.retryAfter !== undefined && { retryAfter: this.retryAfter }),
      ...(this.fields.mismatched !== undefined && { mismatched: this.fields.mismatched }),
      ...(this.fields.stale !== undefined && { stale: this.fields.stale }),
    };
  }
}

/** HTTP status of each code. A `Record` so that a new code without a status does not compile. */
export const HTTP_STATUS_OF: Record<ErrorCode, number> = {
  [ErrorCode.ValidationFailed]: 400,
  [ErrorCode.MalformedJson]: 400,
  [ErrorCode.PayloadTooLarge]: 413,
  [ErrorCode.NotFound]: 404,
  [ErrorCode.AuthenticationRequired]: 401,
  [ErrorCode.InvalidToken]: 401,
  [ErrorCode.TokenExpired]: 401,
  [ErrorCode.CredentialsChanged]: 401,
  [ErrorCode.InvalidCredentials]: 401,
  [ErrorCode.InvalidRefreshToken]: 401,
  [ErrorCode.UsernameTaken]: 409,
  [ErrorCode.InvalidKey]: 400,
  [ErrorCode.InvalidSignature]: 400,
  [ErrorCode.IdentityKeyMismatch]: 409,
  [ErrorCode.KeysIncomplete]: 400,
  [ErrorCode.DuplicateKeyId]: 409,
  [ErrorCode.UnknownRecipient]: 404,
  [ErrorCode.MismatchedDevices]: 409,
  [ErrorCode.StaleDevices]: 410,
  [ErrorCode.TooManyDevices]: 409,
  [ErrorCode.ProvisioningNotFound]: 404,
  [ErrorCode.DeviceNotFound]: 404,
  [ErrorCode.DeviceUnlinked]: 401,
  [ErrorCode.PrimaryDevice]: 409,
  [ErrorCode.SealedSenderRefused]: 401,
  [ErrorCode.MessageNotFound]: 404,
  [ErrorCode.BackupNotFound]: 404,
  [ErrorCode.UnknownFrameType]: 400,
  [ErrorCode.RateLimited]: 429,
  [ErrorCode.TooManyConnections]: 429,
  [ErrorCode.Internal]: 500,
};
