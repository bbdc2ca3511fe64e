import type { DeviceMismatch, ErrorCode, StaleDeviceList } from '@chat/protocol';

/** What went wrong, for callers to branch on (never on `message`). */
export enum SecureChatErrorCode {
  /** An option given to `SecureChatClient.create` is invalid (e.g. `relayUrl`). */
  InvalidOptions = 'INVALID_OPTIONS',
  /** An argument of a public method is invalid (username, body size). */
  InvalidArgument = 'INVALID_ARGUMENT',
  /** The method needs `register`/`login` first, or `connect` was called twice. */
  InvalidState = 'INVALID_STATE',
  /** `login` on an install whose stores hold no identity key. */
  NoLocalIdentity = 'NO_LOCAL_IDENTITY',
  /** The relay refused the request; `relayCode` says why. */
  RelayRejected = 'RELAY_REJECTED',
  /** The relay could not be reached, or answered with something that is not our protocol. */
  Network = 'NETWORK',
  /** The connection closed while a request on it was waiting for its answer. */
  ConnectionLost = 'CONNECTION_LOST',
  /** The relay did not answer a `send` frame in time; the message may or may not have been stored. */
  Timeout = 'TIMEOUT',
  /** Another connection of this device replaced this one (close 4409); the client does not reconnect. */
  ConnectionReplaced = 'CONNECTION_REPLACED',
  /** The access token could not be renewed; log in again. */
  SessionExpired = 'SESSION_EXPIRED',
  /** A peer's prekey bundle was invalid (bad signature, bad key); no session was formed. */
  InvalidPreKeyBundle = 'INVALID_PREKEY_BUNDLE',
  /**
   * A session reset request came with another identity key than the peer had
   * (or one the app has not accepted), and nothing was resent to it (the
   * request is acked).
   */
  UntrustedIdentity = 'UNTRUSTED_IDENTITY',
  /**
   * The peer's identity key changed and the app has not accepted the new one,
   * so nothing is sent to it (`identityPolicy: 'block'`, the default). The
   * `identityChanged` event told the app; `acceptIdentity` or
   * `verifySafetyNumber` lifts it.
   */
  IdentityChanged = 'IDENTITY_CHANGED',
  /** No identity key is known for the peer yet: send it a message or receive one first. */
  UnknownIdentity = 'UNKNOWN_IDENTITY',
  /** The scanned safety number is not this pair's (another key, or not a safety number); nothing was marked verified. */
  SafetyNumberMismatch = 'SAFETY_NUMBER_MISMATCH',
  /**
   * The account's password was changed elsewhere, or the account was deleted
   * (close 4403, `CREDENTIALS_CHANGED`): every token of this install stopped
   * working. The client disconnected and does not reconnect; sign in again.
   */
  CredentialsChanged = 'CREDENTIALS_CHANGED',
  /**
   * This device was unlinked from the account (close 4410, or the relay's
   * `DEVICE_UNLINKED`): its tokens no longer work. The client stopped and
   * every later call fails with `InvalidState`; the app should discard its
   * stores (they hold the account's identity key).
   */
  DeviceUnlinked = 'DEVICE_UNLINKED',
  /** `beginLinking`: the provisioning slot expired (or the relay no longer knows it) before a device approved the link; nothing was saved. */
  LinkExpired = 'LINK_EXPIRED',
  /** libsignal could not encrypt. */
  EncryptionFailed = 'ENCRYPTION_FAILED',
  /** An incoming message did not decrypt; it was dropped (acked) after this was reported. */
  DecryptionFailed = 'DECRYPTION_FAILED',
  /**
   * An incoming message did not decrypt and asking its sender to start a new
   * session failed (the relay could not be reached or refused), or a peer's
   * request to start over could not be answered (the resend failed). The
   * message is left on the relay and handled again on the next connection.
   */
  SessionRepairFailed = 'SESSION_REPAIR_FAILED',
  /** An incoming message decrypted but its content is not valid; it was dropped (acked). */
  MalformedContent = 'MALFORMED_CONTENT',
  /**
   * A sealed-sender message was dropped (acked) for its sender certificate:
   * not signed by a server the configured `trustRoot` certified (forged, or
   * another root), expired, malformed, naming a key other than the identity
   * key of the session it came over, or no `trustRoot` is configured.
   */
  InvalidSenderCertificate = 'INVALID_SENDER_CERTIFICATE',
  /** A store failed; the message is left on the relay and retried on the next connection. */
  StoreFailure = 'STORE_FAILURE',
  /**
   * A store has no record under the id asked for (a one-time prekey already
   * used, say). Stores throw it where libsignal expects a rejection for an
   * unknown id, so that the client can tell a missing key (the message can
   * never decrypt) from a broken store (keep the message for a retry).
   */
  RecordNotFound = 'RECORD_NOT_FOUND',
  /**
   * A PreKey message used a Kyber last-resort prekey with a signed prekey and
   * base key already seen (a replay); the Kyber store refuses it (PQXDH). Like
   * `RecordNotFound`, a refusal of the message, not a store failure.
   */
  PreKeyReused = 'PREKEY_REUSED',
  /**
   * The passphrase does not open this store: it is wrong, or the store's key
   * header was altered (the two cannot be told apart). Nothing was read.
   */
  WrongPassphrase = 'WRONG_PASSPHRASE',
  /**
   * A store record or the store file was altered or damaged: a record failed
   * authentication, sits under another record's id, or the database is
   * corrupt. The record is never used.
   */
  StoreTampered = 'STORE_TAMPERED',
  /** Another process (or another open in this one) holds the store file. */
  StoreLocked = 'STORE_LOCKED',
  /** A `message` listener threw; the message is not acked and will be delivered again. */
  ListenerFailed = 'LISTENER_FAILED',
  /** Acking a message at the relay failed. */
  AckFailed = 'ACK_FAILED',
  /** The relay sent an `error` frame that answers no request of ours. */
  RelayError = 'RELAY_ERROR',
  /** Not a well-formed recovery secret (64 hex digits); nothing was sent or changed. */
  InvalidRecoverySecret = 'INVALID_RECOVERY_SECRET',
  /** The recovery secret is not the one the backup was made with; nothing was changed. */
  WrongRecoverySecret = 'WRONG_RECOVERY_SECRET',
  /** The relay holds no backup for this account. */
  BackupNotFound = 'BACKUP_NOT_FOUND',
  /**
   * The backup cannot be read: altered, truncated, made for another account,
   * or of a format version this SDK does not know. Nothing was changed.
   */
  BackupCorrupted = 'BACKUP_CORRUPTED',
  /** The account state does not fit in the relay's backup size limit; nothing was uploaded. */
  BackupTooLarge = 'BACKUP_TOO_LARGE',
}

/** Where an error about an incoming message came from; never its content. */
export interface IncomingMessageContext {
  messageId: string;
  sender: string;
  senderDevice: number;
}

export interface SecureChatErrorOptions {
  cause?: unknown;
  /** The relay's code, for `RelayRejected` and `RelayError`. */
  relayCode?: ErrorCode;
  /** HTTP status of the refusal, when it came over HTTP. */
  status?: number;
  /** The relay's per-field validation messages, if any. */
  details?: string[];
  /** For the relay's `RATE_LIMITED`: seconds until a retry can succeed. */
  retryAfter?: number;
  /** For the relay's `MISMATCHED_DEVICES`: per account, the devices a send left out and those it named that do not exist. */
  mismatched?: DeviceMismatch[];
  /** For the relay's `STALE_DEVICES`: per account, the devices whose session is stale. */
  stale?: StaleDeviceList[];
  /** For errors about an incoming message. */
  incoming?: IncomingMessageContext;
}

/**
 * The one error class of the SDK (libsignal `Errors.ts` style). Messages never
 * contain plaintext, keys, passwords or tokens.
 */
export class SecureChatError extends Error {
  override readonly name = 'SecureChatError';
  readonly code: SecureChatErrorCode;
  readonly relayCode?: ErrorCode;
  readonly status?: number;
  readonly details?: string[];
  /** For the relay's `RATE_LIMITED`: seconds until a retry can succeed. */
  readonly retryAfter?: number;
  /** For the relay's `MISMATCHED_DEVICES`. */
  readonly mismatched?: DeviceMismatch[];
  /** For the relay's `STALE_DEVICES`. */
  readonly stale?: StaleDeviceList[];
  readonly incoming?: IncomingMessageContext;

  constructor(code: SecureChatErrorCode, message: string, options: SecureChatErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.relayCode = options.relayCode;
    this.status = options.status;
    this.details = options.details;
    this.retryAfter = options.retryAfter;
    this.mismatched = options.mismatched;
    this.stale = options.stale;
    this.incoming = options.incoming;
  }

  /** True when this error has `code`. */
  is(code: SecureChatErrorCode): boolean {
    return this.code === code;
  }

  /** True when `error` is a `SecureChatError`, of `code` if given. */
  static is(error: unknown, code?: SecureChatErrorCode): error is SecureChatError {
    return error instanceof SecureChatError && (code === undefined || error.code === code);
  }

  /** True when `error` is the relay's refusal with `relayCode`. */
  static isRelay(error: unknown, relayCode: ErrorCode): error is SecureChatError {
    return error instanceof SecureChatError && error.relayCode === relayCode;
  }
}
