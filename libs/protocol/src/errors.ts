/**
 * Stable error codes. The relay answers every refusal with one of these, as
 * `{ code, message, details? }` over HTTP, in an `error` frame, or as the
 * reason of a WebSocket close. Clients branch on `code`, never on `message`.
 */
export enum ErrorCode {
  /** A field is missing, of the wrong type, or out of its bounds. */
  ValidationFailed = 'VALIDATION_FAILED',
  /** The body or frame is not valid JSON. */
  MalformedJson = 'MALFORMED_JSON',
  /** The body or frame is larger than the relay accepts. */
  PayloadTooLarge = 'PAYLOAD_TOO_LARGE',
  /** No such route or method. */
  NotFound = 'NOT_FOUND',

  /** No bearer token was presented. */
  AuthenticationRequired = 'AUTHENTICATION_REQUIRED',
  /** The token is malformed, forged, of the wrong algorithm or audience. */
  InvalidToken = 'INVALID_TOKEN',
  /** The token was valid and has expired. */
  TokenExpired = 'TOKEN_EXPIRED',
  /** The token was issued before the account's password changed; sign in again. */
  CredentialsChanged = 'CREDENTIALS_CHANGED',
  /** Username or password is wrong (which one is not said). */
  InvalidCredentials = 'INVALID_CREDENTIALS',
  /** The refresh token is unknown, used or expired. */
  InvalidRefreshToken = 'INVALID_REFRESH_TOKEN',
  /** The username is taken (compared case-insensitively). */
  UsernameTaken = 'USERNAME_TAKEN',

  /** A public key does not parse as the type the field names. */
  InvalidKey = 'INVALID_KEY',
  /** A prekey signature does not verify against the account's identity key. */
  InvalidSignature = 'INVALID_SIGNATURE',
  /** An upload names an identity key other than the one the account registered. */
  IdentityKeyMismatch = 'IDENTITY_KEY_MISMATCH',
  /** A first upload lacks the signed prekey or the Kyber last-resort prekey. */
  KeysIncomplete = 'KEYS_INCOMPLETE',
  /** A prekey id was uploaded before for this device. */
  DuplicateKeyId = 'DUPLICATE_KEY_ID',

  /** No account of that name, or it has not uploaded keys yet. */
  UnknownRecipient = 'UNKNOWN_RECIPIENT',
  /** The send does not address exactly the recipient's devices. */
  MismatchedDevices = 'MISMATCHED_DEVICES',
  /**
   * The send names a registration id that is not the device's current one,
   * or a device that was unlinked: the sender's session with it is stale.
   */
  StaleDevices = 'STALE_DEVICES',
  /** The account already has as many devices as the relay allows. */
  TooManyDevices = 'TOO_MANY_DEVICES',
  /** No open provisioning slot of that id (unknown, expired, already used, or the wrong secret). */
  ProvisioningNotFound = 'PROVISIONING_NOT_FOUND',
  /** The account has no device of that id. */
  DeviceNotFound = 'DEVICE_NOT_FOUND',
  /** The token's device was unlinked from its account (the account still exists); this install must link again. */
  DeviceUnlinked = 'DEVICE_UNLINKED',
  /** Device 1, the account's primary device, cannot be unlinked; delete the account instead. */
  PrimaryDevice = 'PRIMARY_DEVICE',
  /**
   * An unauthenticated (sealed) send without the recipient's access key, or
   * with a wrong one, to a recipient that does not accept sealed messages
   * from anyone; also for a recipient that does not exist (unauthenticated
   * callers learn nothing about which accounts exist).
   */
  SealedSenderRefused = 'SEALED_SENDER_REFUSED',
  /** No stored message of that id for this device. */
  MessageNotFound = 'MESSAGE_NOT_FOUND',

  /** The account has no stored backup. */
  BackupNotFound = 'BACKUP_NOT_FOUND',

  /** The frame has a `type` the relay does not know. */
  UnknownFrameType = 'UNKNOWN_FRAME_TYPE',
  /** Too many requests; retry after the time the relay names. */
  RateLimited = 'RATE_LIMITED',
  /**
   * A WebSocket upgrade from a client address that already holds as many
   * open sockets as the relay allows; one of them has to close first.
   */
  TooManyConnections = 'TOO_MANY_CONNECTIONS',
  /** The relay failed; nothing about the request is implied. */
  Internal = 'INTERNAL',
}

/** The JSON body of every HTTP error and the payload of every `error` frame. */
export interface ErrorBody {
  code: ErrorCode;
  message: string;
  /** For `VALIDATION_FAILED`: one line per failed constraint, naming the field. */
  details?: string[];
  /** For `RATE_LIMITED`: seconds until a retry can succeed (also the `Retry-After` header). */
  retryAfter?: number;
  /** For `MISMATCHED_DEVICES`: per addressed account, the devices the send left out and those it named that do not exist. */
  mismatched?: DeviceMismatch[];
  /** For `STALE_DEVICES`: per addressed account, the devices whose registration id the send got wrong. */
  stale?: StaleDeviceList[];
}

/**
 * One account's side of a `MISMATCHED_DEVICES` refusal. `username` is the
 * recipient for `messages`, and the sender's own username for `sync`.
 */
export interface DeviceMismatch {
  username: string;
  /** Devices of the account with keys that the send did not address; ascending. */
  missing: number[];
  /** Devices the send addressed that the account does not have (and never had); ascending. */
  extra: number[];
}

/** One account's side of a `STALE_DEVICES` refusal. */
export interface StaleDeviceList {
  username: string;
  /** Devices addressed with a registration id other than their current one, or unlinked since; ascending. */
  devices: number[];
}

/**
 * WebSocket close codes the relay uses. 1000-1015 are RFC 6455's; 4000-4999
 * are ours. The close reason is the matching `ErrorCode` where there is one.
 */
export enum CloseCode {
  Normal = 1000,
  /** The relay is shutting down; reconnect (to another instance). */
  GoingAway = 1001,
  /** A socket that was not authenticated in the handshake (should never be seen). */
  PolicyViolation = 1008,
  /** A frame exceeded `MAX_WS_FRAME_BYTES`. */
  MessageTooBig = 1009,
  /** The relay could not read the device's queue; reconnect with back-off. */
  InternalError = 1011,
  /** The token expired while the socket was open; refresh and reconnect. */
  TokenExpired = 4401,
  /** The account's password changed or the account was deleted; sign in again. */
  CredentialsChanged = 4403,
  /** The same device connected again; this older socket is closed. Do not reconnect. */
  ConnectionReplaced = 4409,
  /** This device was unlinked from its account; its tokens are dead. Do not reconnect. */
  DeviceUnlinked = 4410,
}
