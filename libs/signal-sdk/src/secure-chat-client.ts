import { createHash, randomUUID } from 'node:crypto';
import PQueue from 'p-queue';
import { ProtocolAddress, PublicKey } from '@signalapp/libsignal-client';
import type { AuthResponse, BackupResponse, Envelope, PreKeyBundleResponse, SendMessageRequest, ServerFrame } from '@chat/protocol';
import {
  ClientFrameType,
  CloseCode,
  DEVICE_ID_MAX,
  DEVICE_ID_MIN,
  EnvelopeType,
  ErrorCode,
  MAX_PREKEYS_PER_UPLOAD,
  PASSWORD_MAX_LENGTH,
  PASSWORD_MIN_LENGTH,
  ServerFrameType,
  USERNAME_PATTERN,
  canonicalUsername,
} from '@chat/protocol';
import { exportAccountState, restoreAccountState } from './backup/account-backup.js';
import { DEFAULT_BACKUP_KDF, isSupportedKdf, openBackup, sealBackup, type BackupKdfParams } from './backup/backup-format.js';
import { parseRecoverySecret } from './backup/recovery-secret.js';
import { SecureChatError, SecureChatErrorCode, type IncomingMessageContext } from './errors.js';
import {
  ChatEvent,
  ConnectionState,
  SessionResetReason,
  TypedEventEmitter,
  type ChatEventHandlerMap,
  type IncomingMessage,
  type SessionReset,
} from './events.js';
import {
  IDENTITY_POLICIES,
  IdentityStatus,
  IdentityTrust,
  identityChangedError,
  identityStatusOf,
  type IdentityChanged,
  type IdentityPolicy,
  type LocalParty,
} from './identity/identity-trust.js';
import type { SafetyNumber } from './identity/safety-number.js';
import { asDeviceId, asMessageId, type DeviceId } from './ids.js';
import { amendStores } from './stores/memory-stores.js';
import { SESSION_REPAIR_WINDOW_MS, type AccountRecord, type LocalIdentity, type SecureChatStores } from './stores/stores.js';
import {
  ContentFormatError,
  ContentKind,
  MAX_BODY_BYTES,
  decodeContent,
  decodeText,
  encodeContent,
  encodeSessionResetRequest,
  sessionResetSince,
  type MessageContent,
} from './session/content.js';
import { DecryptFailure, DecryptFailureKind, PeerSessions } from './session/peer-sessions.js';
import { DEFAULT_SESSION_RESET_INTERVAL_MS, ResetDecision, SessionRepairLimiter } from './session/session-repair.js';
import {
  DEFAULT_KEY_GRACE_PERIOD_MS,
  DEFAULT_KEY_MAINTENANCE_INTERVAL_MS,
  DEFAULT_KEY_ROTATION_INTERVAL_MS,
  KeyMaintenance,
} from './keys/key-maintenance.js';
import { generateLocalIdentity } from './keys/prekeys.js';
import { BackOff, type BackOffOptions } from './transport/back-off.js';
import { HttpRelayTransport, relayUrlsOf } from './transport/http-relay-transport.js';
import type { RelaySocket, RelayTransport } from './transport/relay-transport.js';
import { RetryAfterMemory } from './transport/retry-after.js';

/** Receives the client's diagnostics. Messages never contain plaintext, keys, passwords or tokens. */
export interface SecureChatLogger {
  debug?(message: string): void;
  warn?(message: string): void;
}

export interface SecureChatClientOptions {
  /** The relay's base URL, `http://` or `https://`; the WebSocket URL is derived from it. */
  relayUrl: string;
  /** Stores left out are memory stores (lost on exit). */
  stores?: Partial<SecureChatStores>;
  /**
   * Ack each message once every `message` listener has returned (default
   * true). With false, the app calls `message.ack()` itself.
   */
  autoAck?: boolean;
  /** How to reach the relay; defaults to HTTP + WebSocket at `relayUrl`. */
  transport?: RelayTransport;
  /** Reconnect delays. */
  backOff?: BackOffOptions;
  /**
   * One-time EC and one-time Kyber prekeys in the first upload, and at least
   * this many of a kind in a top-up (default and maximum 100). A top-up
   * always brings the relay's count up to its threshold.
   */
  oneTimePreKeyBatch?: number;
  /**
   * How often the signed EC prekey and the Kyber last-resort prekey are
   * replaced (default `DEFAULT_KEY_ROTATION_INTERVAL_MS`, 2 days, as Signal's
   * clients). Checked at sign-in, on connect and every
   * `keyMaintenanceIntervalMs` while connected, against `now`.
   */
  keyRotationIntervalMs?: number;
  /**
   * How long a replaced signed prekey or Kyber last-resort prekey is kept so
   * that PreKey messages built on it still decrypt (default
   * `DEFAULT_KEY_GRACE_PERIOD_MS`, 30 days, Signal's archive age), counted
   * from its replacement.
   */
  keyGracePeriodMs?: number;
  /** How often a connected client checks whether keys are due for rotation or deletion (default 1 hour). */
  keyMaintenanceIntervalMs?: number;
  /**
   * What happens when a peer's identity key changes (default `'block'`):
   * `'block'` sends nothing to the new key until `acceptIdentity` or
   * `verifySafetyNumber`; `'warn'` trusts it at once. `identityChanged` is
   * emitted either way.
   */
  identityPolicy?: IdentityPolicy;
  /** How long a `send` over the WebSocket waits for `sent` (default 30 s). */
  sendTimeoutMs?: number;
  /** The clock, ms since the epoch; injectable for tests. */
  now?: () => number;
  logger?: SecureChatLogger;
  /**
   * scrypt cost of the key `createBackup` derives from the recovery secret
   * (default `DEFAULT_BACKUP_KDF`: N = 2^17, r = 8, p = 1). Lower it only in
   * tests; restoring reads the cost from the backup itself.
   */
  backupKdf?: BackupKdfParams;
  /**
   * Session repair: the least time between two requests to one peer device
   * to start a new session, and between two resends to one peer device
   * (default 60 s). Lower it only in tests.
   */
  sessionResetIntervalMs?: number;
}

/** A peer's identity key as this install knows it. */
export interface PeerIdentity {
  username: string;
  /** The key last seen for the peer (libsignal `PublicKey.serialize()`, 33 bytes). */
  identityKey: Uint8Array;
  status: IdentityStatus;
}

/** What `send` returns. */
export interface SentMessage {
  /** The timestamp put inside the encrypted content. */
  timestamp: number;
  /** When the relay stored the message. */
  serverTimestamp: number;
  /** The recipient devices the message was encrypted for. */
  devices: DeviceId[];
}

interface AuthSession {
  accessToken: string;
  refreshToken: string;
  expiresAt: number;
}

interface PendingSend {
  resolve(serverTimestamp: number): void;
  reject(error: SecureChatError): void;
  timer: NodeJS.Timeout;
}

/**
 * A decrypted envelope's content, or why it is not a valid content record,
 * or that it is a resend of a message already delivered, or a session reset
 * request that came with another identity key than the peer had. `fresh`:
 * decrypted now, not recalled from the pending messages.
 */
type OpenedMessage = (
  | { content: MessageContent }
  | { malformed: ContentFormatError }
  | { resendOfDelivered: true }
  | { resetFromNewIdentity: true }
) & {
  fresh: boolean;
  /** The sender's key changed in this decryption. */
  identityChange: IdentityChanged | null;
  /** How the sender's key stands for this message. */
  identity: IdentityStatus;
};

/** What became of an envelope: a message for the app, nothing more to do (ack it), or unreadable (report, then ack). */
type ReceivedEnvelope = { message: MessageContent; identity: IdentityStatus } | { handled: true } | { dropped: SecureChatError };

/** Refresh this long before the access token expires (at most a fifth of its lifetime). */
const REFRESH_MARGIN_MS = 60_000;

/** How often the sent and received message logs are pruned to `SESSION_REPAIR_WINDOW_MS`. */
const MESSAGE_LOG_PRUNE_INTERVAL_MS = 60 * 60 * 1000;

const RESET_REASON_OF: Partial<Record<DecryptFailureKind, SessionResetReason>> = {
  [DecryptFailureKind.NoSession]: SessionResetReason.NoSession,
  [DecryptFailureKind.InvalidMessage]: SessionResetReason.InvalidMessage,
  [DecryptFailureKind.UnknownPreKey]: SessionResetReason.UnknownPreKey,
};

const isUserContent = (kind: ContentKind) => kind === ContentKind.Text || kind === ContentKind.Bytes;
const sha256 = (bytes: Uint8Array) => new Uint8Array(createHash('sha256').update(bytes).digest());
const base64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');

/**
 * An end-to-end encrypted chat client: PQXDH and the Double Ratchet from
 * libsignal, over the relay's HTTP and WebSocket API.
 *
 * Events: see `ChatEvent` and `ChatEventHandlerMap`.
 */
export class SecureChatClient extends TypedEventEmitter<ChatEvent, ChatEventHandlerMap> {
  readonly stores: SecureChatStores;
  private readonly transport: RelayTransport;
  private readonly sessions: PeerSessions;
  private readonly autoAck: boolean;
  private readonly backOff: BackOff;
  private readonly keys: KeyMaintenance;
  private readonly trust: IdentityTrust;
  /** The relay's RATE_LIMITED answers to bundle fetches, per username. */
  private readonly bundleFetchLimits: RetryAfterMemory;
  private readonly sendTimeoutMs: number;
  private readonly now: () => number;
  private readonly logger: SecureChatLogger;
  private readonly backupKdf: BackupKdfParams;
  private readonly sessionResetIntervalMs: number;
  private readonly repair: SessionRepairLimiter;
  /** Every content this client encrypts gets a later timestamp than the one before: a resend is recognised by it. */
  private lastContentTimestamp = 0;
  private messageLogsPrunedAt = Number.NEGATIVE_INFINITY;

  private account: { username: string; deviceId: DeviceId } | null = null;
  private auth: AuthSession | null = null;
  private refreshing: Promise<void> | undefined;
  private refreshTimer: NodeJS.Timeout | undefined;
  /**
   * A password change or account deletion of this client awaiting the
   * relay's answer: the relay closes every socket of the account (4403) for
   * it, this one's too, which is then no reason to stop.
   */
  private credentialChange: { done: Promise<unknown>; reconnect: boolean } | undefined;
  /** Set by `deleteAccount`: the account is gone, the client is of no further use. */
  private accountDeleted = false;

  private state = ConnectionState.Disconnected;
  private wantConnected = false;
  private socket: RelaySocket | null = null;
  private socketGeneration = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private readonly pendingSends = new Map<string, PendingSend>();
  /** Incoming frames are handled one at a time, in the order the relay sent them. */
  private readonly incoming = new PQueue({ concurrency: 1 });
  /**
   * Messages whose listeners are running or whose `ack()` the app has not
   * called yet: a redelivery of one of them is ignored. Their decrypted
   * content is kept in the metadata store's pending messages until the ack.
   */
  private readonly inFlight = new Set<string>();

  private constructor(options: SecureChatClientOptions) {
    super();
    this.stores = amendStores(options.stores);
    this.transport = options.transport ?? new HttpRelayTransport(options.relayUrl);
    this.autoAck = options.autoAck ?? true;
    this.backOff = new BackOff(options.backOff);
    this.sendTimeoutMs = options.sendTimeoutMs ?? 30_000;
    this.now = options.now ?? Date.now;
    this.logger = options.logger ?? {};
    this.backupKdf = options.backupKdf ?? DEFAULT_BACKUP_KDF;
    this.sessions = new PeerSessions(this.stores, () => this.localAddress());
    this.sessionResetIntervalMs = options.sessionResetIntervalMs ?? DEFAULT_SESSION_RESET_INTERVAL_MS;
    if (!Number.isSafeInteger(this.sessionResetIntervalMs) || this.sessionResetIntervalMs < 1) {
      throw new SecureChatError(SecureChatErrorCode.InvalidOptions, 'sessionResetIntervalMs must be a positive integer');
    }
    this.repair = new SessionRepairLimiter(this.sessionResetIntervalMs, this.now);
    const oneTimePreKeyBatch = options.oneTimePreKeyBatch ?? MAX_PREKEYS_PER_UPLOAD;
    if (!Number.isInteger(oneTimePreKeyBatch) || oneTimePreKeyBatch < 1 || oneTimePreKeyBatch > MAX_PREKEYS_PER_UPLOAD) {
      throw new SecureChatError(SecureChatErrorCode.InvalidOptions, `oneTimePreKeyBatch must be 1..${MAX_PREKEYS_PER_UPLOAD}`);
    }
    const keyOptions = {
      oneTimePreKeyBatch,
      rotationIntervalMs: positiveInteger(options.keyRotationIntervalMs ?? DEFAULT_KEY_ROTATION_INTERVAL_MS, 'keyRotationIntervalMs'),
      gracePeriodMs: positiveInteger(options.keyGracePeriodMs ?? DEFAULT_KEY_GRACE_PERIOD_MS, 'keyGracePeriodMs'),
      maintenanceIntervalMs: positiveInteger(options.keyMaintenanceIntervalMs ?? DEFAULT_KEY_MAINTENANCE_INTERVAL_MS, 'keyMaintenanceIntervalMs'),
      now: this.now,
    };
    this.keys = new KeyMaintenance(
      this.stores,
      {
        uploadKeys: (keys) => this.authorized((token) => this.transport.uploadKeys(token, keys)),
        getPreKeyCount: () => this.authorized((token) => this.transport.getPreKeyCount(token)),
      },
      keyOptions,
      (fn) => this.transaction(fn),
    );
    const identityPolicy = options.identityPolicy ?? 'block';
    if (!IDENTITY_POLICIES.includes(identityPolicy)) {
      throw new SecureChatError(SecureChatErrorCode.InvalidOptions, `identityPolicy must be one of ${IDENTITY_POLICIES.join(', ')}`);
    }
    this.trust = new IdentityTrust(identityPolicy);
    this.bundleFetchLimits = new RetryAfterMemory(this.now);
    if (!isSupportedKdf(this.backupKdf)) {
      throw new SecureChatError(SecureChatErrorCode.InvalidOptions, 'backupKdf is outside BACKUP_KDF_LIMITS');
    }
  }

  /**
   * @throws {SecureChatError} `InvalidOptions` when `relayUrl` is not an http(s) URL.
   */
  static create(options: SecureChatClientOptions): SecureChatClient {
    relayUrlsOf(options.relayUrl);
    return new SecureChatClient(options);
  }

  get connectionState(): ConnectionState {
    return this.state;
  }

  /** The signed-in username, or null before `register`/`login`. */
  get username(): string | null {
    return this.account?.username ?? null;
  }

  get deviceId(): DeviceId | null {
    return this.account?.deviceId ?? null;
  }

  /**
   * Creates the account and its first device, creating this install's
   * identity key and registration id if the stores hold none, and uploads the
   * public halves of a signed prekey, a Kyber last-resort prekey and one-time
   * EC and Kyber prekeys. Private halves stay in the stores.
   * @throws {SecureChatError} `RelayRejected` (e.g. `USERNAME_TAKEN`, `VALIDATION_FAILED`), `Network`.
   */
  async register(username: string, password: string): Promise<void> {
    this.assertNotDeleted();
    await this.ensureLocalIdentity();
    await this.keepAuth(await this.transport.register({ username, password: checkPassword(password) }));
    await this.saveAccount();
    await this.keys.uploadInitialKeys();
  }

  /**
   * Signs in an install whose stores already hold its identity, replaces its
   * signed keys when they are due (or were never confirmed by the relay),
   * deletes replaced ones past their grace period, and tops up one-time keys
   * when the relay says they run low.
   * @throws {SecureChatError} `NoLocalIdentity`, `InvalidState` (the stores belong to another account),
   *   `RelayRejected` (e.g. `INVALID_CREDENTIALS`, `IDENTITY_KEY_MISMATCH`), `Network`.
   */
  async login(username: string, password: string): Promise<void> {
    this.assertNotDeleted();
    if (!(await this.stores.identity.getLocalIdentity())) {
      throw new SecureChatError(SecureChatErrorCode.NoLocalIdentity, 'the stores hold no identity key; register first');
    }
    const stored = await this.stores.metadata.getAccount();
    if (stored && stored.username !== canonicalUsername(username)) {
      throw new SecureChatError(SecureChatErrorCode.InvalidState, 'the stores belong to another account');
    }
    await this.keepAuth(await this.transport.login({ username, password: checkPassword(password) }));
    await this.saveAccount();
    await this.maintainKeys();
  }

  /**
   * Signs in again with the refresh token the stores kept, without the
   * password: for an install restarted from persistent stores, whose
   * sessions then continue. Like `login`, rotates signed keys when due and
   * tops up one-time prekeys that run low.
   * @throws {SecureChatError} `NoLocalIdentity`; `InvalidState` when the stores hold no account or no
   *   refresh token (use `login`), or the relay answered for another account; `SessionExpired` when
   *   the relay refused the token (expired, already used or revoked: use `login`); `Network`.
   */
  async resume(): Promise<void> {
    this.assertNotDeleted();
    if (!(await this.stores.identity.getLocalIdentity())) {
      throw new SecureChatError(SecureChatErrorCode.NoLocalIdentity, 'the stores hold no identity key; register first');
    }
    const account = await this.stores.metadata.getAccount();
    const refreshToken = await this.stores.metadata.getRefreshToken();
    if (!account || !refreshToken) {
      throw new SecureChatError(SecureChatErrorCode.InvalidState, 'the stores hold no session to resume; log in with the password');
    }
    let response: AuthResponse;
    try {
      response = await this.transport.refresh(refreshToken);
    } catch (cause) {
      if (!SecureChatError.is(cause, SecureChatErrorCode.RelayRejected)) throw cause;
      await this.stores.metadata.saveRefreshToken(null);
      throw new SecureChatError(SecureChatErrorCode.SessionExpired, 'the stored session could not be renewed; log in again', { cause });
    }
    if (response.username !== account.username || response.deviceId !== account.deviceId) {
      throw new SecureChatError(SecureChatErrorCode.InvalidState, 'the relay resumed another account than the stores hold');
    }
    await this.keepAuth(response);
    await this.maintainKeys();
  }

  /**
   * Opens the WebSocket. Resolves once connected; afterwards a dropped
   * connection is re-opened with back-off until `close()`, except when another
   * connection of this device replaced it (close 4409).
   * @throws {SecureChatError} `InvalidState` before `register`/`login`; `RelayRejected`, `Network`,
   *   `SessionExpired`, `CredentialsChanged` when the first attempt fails (the client then stays disconnected).
   */
  async connect(): Promise<void> {
    this.requireAuth();
    if (this.wantConnected) throw new SecureChatError(SecureChatErrorCode.InvalidState, 'connect() was already called');
    this.wantConnected = true;
    this.setState(ConnectionState.Connecting);
    try {
      await this.openSocket();
    } catch (error) {
      this.wantConnected = false;
      this.setState(ConnectionState.Disconnected);
      throw error;
    }
  }

  /**
   * Encrypts `body` for every device of `username` and hands it to the relay:
   * over the WebSocket when connected, else over HTTP. Without a session, the
   * recipient's prekey bundle is fetched first (PQXDH); a bundle whose
   * identity key differs from the one this install knows is an identity
   * change (`identityChanged`), and under `identityPolicy: 'block'` nothing
   * is sent to the new key until the app accepts it.
   * @throws {SecureChatError} `InvalidArgument`, `InvalidState`, `RelayRejected` (e.g. `UNKNOWN_RECIPIENT`,
   *   or `RATE_LIMITED` with `retryAfter` for the bundle fetch), `InvalidPreKeyBundle`, `IdentityChanged`,
   *   `EncryptionFailed`, `Network`, `ConnectionLost`, `Timeout`, `CredentialsChanged`.
   */
  async send(username: string, body: string | Uint8Array): Promise<SentMessage> {
    this.requireAuth();
    const to = canonicalUsername(username);
    if (!USERNAME_PATTERN.test(to)) throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'not a valid username');
    const isText = typeof body === 'string';
    const bytes = isText ? new TextEncoder().encode(body) : body;
    if (!isText && !(bytes instanceof Uint8Array)) {
      throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'body must be a string or a Uint8Array');
    }
    if (bytes.length > MAX_BODY_BYTES) {
      throw new SecureChatError(SecureChatErrorCode.InvalidArgument, `body larger than ${MAX_BODY_BYTES} bytes`);
    }
    const timestamp = this.nextContentTimestamp();
    const plaintext = encodeContent({ kind: isText ? ContentKind.Text : ContentKind.Bytes, timestamp, body: bytes });

    return this.sessions.withPeer(to, async () => {
      await this.trust.assertSendable(this.stores, to);
      let devices = await this.devicesWithSession(to);
      if (devices.length === 0) devices = await this.openSessions(to);
      let serverTimestamp: number;
      try {
        serverTimestamp = await this.transmit(to, devices, plaintext);
      } catch (error) {
        if (!SecureChatError.isRelay(error, ErrorCode.MismatchedDevices)) throw error;
        // The recipient added or removed a device: address exactly the devices its bundle names now.
        devices = await this.openSessions(to);
        serverTimestamp = await this.transmit(to, devices, plaintext);
      }
      await this.keepForResend(to, devices, timestamp, serverTimestamp, plaintext);
      return { timestamp, devices, serverTimestamp };
    });
  }

  /** Closes the connection and stops reconnecting, refreshing and key maintenance. Unacked messages stay on the relay. */
  async close(): Promise<void> {
    this.wantConnected = false;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.refreshTimer);
    this.keys.stop();
    this.socketGeneration++;
    const socket = this.socket;
    this.socket = null;
    socket?.close(CloseCode.Normal, 'client closed');
    this.failPendingSends();
    this.incoming.clear();
    this.setState(ConnectionState.Disconnected);
  }

  // --- backup ---------------------------------------------------------------

  /**
   * Encrypts what a new install needs to continue as this user (identity key
   * pair, registration id, account, key id counters, trusted peer identity
   * keys; not sessions, not prekeys) under a key derived from
   * `recoverySecret`, and stores it at the relay in place of the account's
   * previous backup. The relay never sees the secret; make one with
   * `generateRecoverySecret()`.
   * @throws {SecureChatError} `InvalidState` before `register`/`login`, `InvalidRecoverySecret`,
   *   `NoLocalIdentity`, `BackupTooLarge`, `RelayRejected`, `Network`.
   */
  async createBackup(recoverySecret: string): Promise<void> {
    this.requireAuth();
    const secret = parseRecoverySecret(recoverySecret);
    const account = this.localAccount();
    const contents = await this.transaction((stores) => exportAccountState(stores, account, this.now()));
    const blob = await sealBackup(contents, secret, this.backupKdf);
    await this.authorized((token) => this.transport.putBackup(token, { blob: Buffer.from(blob).toString('base64') }));
  }

  /**
   * Makes this new install the account's device again: signs in, downloads
   * and decrypts the account's backup, and only then writes it into the
   * stores, which must be empty. Then uploads a new signed prekey, Kyber
   * last-resort prekey and one-time batches, replacing the one-time keys the
   * relay still held for the device (their private halves are not in a
   * backup). Sessions are not in a backup either: the next message to a peer
   * opens a new one. If only the final key upload fails, calling this again
   * finishes the restore.
   * @throws {SecureChatError} `InvalidRecoverySecret`, `InvalidArgument`, `RelayRejected`
   *   (e.g. `INVALID_CREDENTIALS`), `BackupNotFound`, `WrongRecoverySecret`, `BackupCorrupted`
   *   (with these the stores are left untouched), `InvalidState` (the stores hold another identity
   *   or account), `Network`.
   */
  async restoreFromBackup(username: string, password: string, recoverySecret: string): Promise<void> {
    this.assertNotDeleted();
    const secret = parseRecoverySecret(recoverySecret);
    const auth = await this.transport.login({ username, password: checkPassword(password) });
    let backup: BackupResponse;
    try {
      backup = await this.transport.getBackup(auth.accessToken);
    } catch (cause) {
      if (!SecureChatError.isRelay(cause, ErrorCode.BackupNotFound)) throw cause;
      throw new SecureChatError(SecureChatErrorCode.BackupNotFound, 'the relay holds no backup for this account', {
        cause,
        relayCode: ErrorCode.BackupNotFound,
      });
    }
    if (typeof backup?.blob !== 'string') throw new SecureChatError(SecureChatErrorCode.Network, 'the relay answered without a backup blob');
    const contents = await openBackup(new Uint8Array(Buffer.from(backup.blob, 'base64')), secret, auth.username);
    const account = { username: auth.username, deviceId: asDeviceId(auth.deviceId) };
    await this.transaction((stores) => restoreAccountState(stores, contents, account));
    await this.keepAuth(auth);
    await this.keys.uploadInitialKeys({ replaceOneTimePreKeys: true });
  }

  /**
   * Deletes the account's backup at the relay; succeeds when there is none.
   * @throws {SecureChatError} `InvalidState` before `register`/`login`, `RelayRejected`, `Network`.
   */
  async deleteBackup(): Promise<void> {
    this.requireAuth();
    await this.authorized((token) => this.transport.deleteBackup(token));
  }

  // --- identity trust --------------------------------------------------------

  /**
   * The identity key this install knows for `username` (the last seen) and
   * how it stands, or null when none was seen yet.
   * @throws {SecureChatError} `InvalidArgument` for a malformed username.
   */
  async peerIdentity(username: string): Promise<PeerIdentity | null> {
    const peer = checkUsername(username);
    const known = await this.trust.describe(this.stores, peer);
    return known && { username: peer, ...known };
  }

  /**
   * Trusts the peer's current identity key for sending (after an
   * `identityChanged`, when the user chose to go on without verifying).
   * Pass the `newKey` the app showed, so that a key that changed again since
   * is not accepted unseen. Verification of an earlier key is not carried over.
   * @throws {SecureChatError} `InvalidArgument`; `UnknownIdentity` when no key is known for the peer;
   *   `IdentityChanged` when `identityKey` is given and is not the current key.
   */
  async acceptIdentity(username: string, identityKey?: Uint8Array): Promise<void> {
    const peer = checkUsername(username);
    await this.sessions.withPeer(peer, () => this.transaction((stores) => this.trust.accept(stores, peer, identityKey)));
  }

  /**
   * The safety number of this account and `username`, from this install's
   * identity key and the peer's current one (libsignal `Fingerprint`, 5200
   * iterations, version 2, each identifier the canonical username as UTF-8;
   * docs/protocol.md, "Safety numbers"). Both sides get the same
   * `displayable` digits; each shows its `scannable` form as a QR code for
   * the other to pass to `verifySafetyNumber`.
   * @throws {SecureChatError} `InvalidArgument`; `InvalidState` when the stores hold no account;
   *   `NoLocalIdentity`; `UnknownIdentity` when no key is known for the peer yet.
   */
  async safetyNumber(username: string): Promise<SafetyNumber> {
    const peer = checkUsername(username);
    return this.trust.safetyNumber(this.stores, await this.localParty(), peer);
  }

  /**
   * Checks a safety number scanned from the peer's screen against the keys
   * this install holds (libsignal `ScannableFingerprint.compare`) and, if they
   * match, marks the peer's current key verified (and trusted). A later change
   * of that key makes it unverified again and is reported with `wasVerified`.
   * @throws {SecureChatError} `SafetyNumberMismatch` (nothing changes then), `InvalidArgument`,
   *   `InvalidState`, `NoLocalIdentity`, `UnknownIdentity`.
   */
  async verifySafetyNumber(username: string, scanned: Uint8Array): Promise<void> {
    const peer = checkUsername(username);
    if (!(scanned instanceof Uint8Array)) throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'scanned must be a Uint8Array');
    const local = await this.localParty();
    await this.sessions.withPeer(peer, () => this.transaction((stores) => this.trust.verify(stores, local, peer, scanned)));
  }

  private async localParty(): Promise<LocalParty> {
    const username = this.account?.username ?? (await this.stores.metadata.getAccount())?.username;
    if (!username) throw new SecureChatError(SecureChatErrorCode.InvalidState, 'the stores hold no account; register or log in first');
    const identity = await this.stores.identity.getLocalIdentity();
    if (!identity) throw new SecureChatError(SecureChatErrorCode.NoLocalIdentity, 'the stores hold no identity key');
    return { username, identityKey: identity.identityKeyPair.publicKey };
  }

  // --- account ----------------------------------------------------------------

  /**
   * Changes the account's password. The relay then refuses every earlier
   * access and refresh token of the account (other installs get
   * `CredentialsChanged`) and closes its sockets; this client keeps going
   * with the new tokens it got back (saved in the stores for `resume`) and
   * reconnects if it was connected.
   * @throws {SecureChatError} `InvalidState` before sign-in, `InvalidArgument` (a new password of
   *   8..256 characters), `RelayRejected` (`INVALID_CREDENTIALS`: the current password is wrong),
   *   `CredentialsChanged` (changed elsewhere meanwhile), `Network`.
   */
  async changePassword(currentPassword: string, newPassword: string): Promise<void> {
    this.requireAuth();
    checkPassword(currentPassword);
    if (checkPassword(newPassword).length < PASSWORD_MIN_LENGTH) {
      throw new SecureChatError(SecureChatErrorCode.InvalidArgument, `the new password must be ${PASSWORD_MIN_LENGTH}..${PASSWORD_MAX_LENGTH} characters`);
    }
    const done = this.authorized((token) => this.transport.changePassword(token, { currentPassword, newPassword }), true).then((response) =>
      this.keepAuth(response),
    );
    this.credentialChange = { done, reconnect: true };
    try {
      await done;
      // The relay closed this socket too (4403); if that has not reached us yet, replace it now.
      const old = this.socket;
      if (this.wantConnected && old) {
        this.socketGeneration++;
        this.socket = null;
        old.close(CloseCode.Normal, 'password changed');
        this.failPendingSends();
        this.keys.stop();
        this.scheduleReconnect(0, false);
      }
    } finally {
      this.credentialChange = undefined;
    }
  }

  /**
   * Deletes the account at the relay (its devices, keys, queued messages and
   * backup; the username stays unavailable for a cooling-off period), then
   * closes this client for good: every later call fails with `InvalidState`.
   * The stored refresh token is cleared; the stores still hold this
   * install's identity key and sessions, now of no use: the app should
   * discard them (close `SqliteStores` and delete its file).
   * @throws {SecureChatError} `InvalidState` before sign-in, `InvalidArgument`, `RelayRejected`
   *   (`INVALID_CREDENTIALS`: wrong password; nothing was deleted), `CredentialsChanged`, `Network`.
   */
  async deleteAccount(password: string): Promise<void> {
    this.requireAuth();
    checkPassword(password);
    const done = this.authorized((token) => this.transport.deleteAccount(token, { password }), true);
    this.credentialChange = { done, reconnect: false };
    try {
      await done;
    } finally {
      this.credentialChange = undefined;
    }
    this.accountDeleted = true;
    await this.close();
    this.auth = null;
    this.account = null;
    await this.stores.metadata.saveRefreshToken(null);
  }

  // --- keys and account -----------------------------------------------------

  private async ensureLocalIdentity(): Promise<LocalIdentity> {
    const existing = await this.stores.identity.getLocalIdentity();
    if (existing) return existing;
    const identity = generateLocalIdentity();
    await this.stores.identity.saveLocalIdentity(identity);
    return identity;
  }

  private async saveAccount(): Promise<void> {
    if (this.account) await this.stores.metadata.saveAccount(this.account);
  }

  /**
   * Signed keys first: a device whose first upload never reached the relay
   * must send its signed pair before one-time keys are accepted.
   */
  private async maintainKeys(): Promise<void> {
    await this.keys.rotateAndPrune();
    await this.keys.topUp();
  }

  /** `maintainKeys` in the background; failures are reported as `error` events. */
  private maintainKeysInBackground(): void {
    this.maintainKeys().catch((error: unknown) => this.report(error));
  }

  /**
   * Runs `fn` in one store transaction when the stores have them (see
   * `SecureChatStores.transaction`); `fn` must use the stores it is given.
   */
  private transaction<T>(fn: (stores: SecureChatStores) => Promise<T>): Promise<T> {
    return this.stores.transaction ? this.stores.transaction(fn) : fn(this.stores);
  }

  private localAddress(): ProtocolAddress {
    if (!this.account) throw new SecureChatError(SecureChatErrorCode.InvalidState, 'not signed in');
    return ProtocolAddress.new(this.account.username, this.account.deviceId);
  }

  private localAccount(): AccountRecord {
    if (!this.account) throw new SecureChatError(SecureChatErrorCode.InvalidState, 'not signed in');
    return this.account;
  }

  // --- tokens ---------------------------------------------------------------

  private acceptAuth(response: AuthResponse): void {
    this.account = { username: response.username, deviceId: asDeviceId(response.deviceId) };
    this.auth = {
      accessToken: response.accessToken,
      refreshToken: response.refreshToken,
      expiresAt: this.now() + response.expiresIn * 1000,
    };
    clearTimeout(this.refreshTimer);
    const lifetimeMs = response.expiresIn * 1000;
    const delay = Math.max(0, lifetimeMs - Math.min(REFRESH_MARGIN_MS, lifetimeMs / 5));
    this.refreshTimer = setTimeout(() => {
      this.refresh().catch((error: unknown) => this.report(error));
    }, delay);
    this.refreshTimer.unref();
  }

  /** `acceptAuth`, then keeps the new refresh token in the stores for `resume()`. */
  private async keepAuth(response: AuthResponse): Promise<void> {
    this.acceptAuth(response);
    await this.stores.metadata.saveRefreshToken(response.refreshToken);
  }

  private assertNotDeleted(): void {
    if (this.accountDeleted) throw new SecureChatError(SecureChatErrorCode.InvalidState, 'the account was deleted; this client is closed');
  }

  private requireAuth(): AuthSession {
    this.assertNotDeleted();
    if (!this.auth) throw new SecureChatError(SecureChatErrorCode.InvalidState, 'register or log in first');
    return this.auth;
  }

  /** One refresh at a time: refresh tokens are single use. */
  private refresh(): Promise<void> {
    this.refreshing ??= this.exchangeRefreshToken().finally(() => {
      this.refreshing = undefined;
    });
    return this.refreshing;
  }

  private async exchangeRefreshToken(): Promise<void> {
    const { refreshToken } = this.requireAuth();
    try {
      await this.keepAuth(await this.transport.refresh(refreshToken));
    } catch (cause) {
      if (SecureChatError.is(cause, SecureChatErrorCode.RelayRejected)) {
        this.auth = null;
        clearTimeout(this.refreshTimer);
        await this.stores.metadata.saveRefreshToken(null);
        throw new SecureChatError(SecureChatErrorCode.SessionExpired, 'the session could not be renewed; log in again', { cause });
      }
      throw cause;
    }
  }

  private async accessToken(): Promise<string> {
    if (this.requireAuth().expiresAt - this.now() < 5_000) await this.refresh();
    return this.requireAuth().accessToken;
  }

  /**
   * Runs `request` with the access token, refreshing once if the relay says
   * it expired. A request refused for a token that predates this client's
   * own password change (sent while the change was on its way) is retried
   * once the change is answered, on the new token.
   * `ownCredentialChange`: the request is that change (or the deletion) itself.
   * @throws {SecureChatError} `CredentialsChanged` when the relay says the token predates a password
   *   change or the account's deletion made elsewhere (the client then stops, see `stopForChangedCredentials`).
   */
  private async authorized<T>(request: (accessToken: string) => Promise<T>, ownCredentialChange = false): Promise<T> {
    try {
      try {
        return await request(await this.accessToken());
      } catch (error) {
        if (!SecureChatError.isRelay(error, ErrorCode.TokenExpired)) throw error;
        await this.refresh();
        return await request(this.requireAuth().accessToken);
      }
    } catch (error) {
      if (!SecureChatError.isRelay(error, ErrorCode.CredentialsChanged)) throw error;
      const change = this.credentialChange;
      if (change && !ownCredentialChange) {
        await change.done.catch(() => undefined);
        if (!change.reconnect || !this.auth) throw error;
        return request(this.requireAuth().accessToken);
      }
      this.stopForChangedCredentials(false);
      throw new SecureChatError(SecureChatErrorCode.CredentialsChanged, 'the password was changed elsewhere or the account deleted; sign in again', {
        cause: error,
        relayCode: ErrorCode.CredentialsChanged,
      });
    }
  }

  /**
   * The account's password changed elsewhere, or the account was deleted:
   * every token of this install is dead. Stops connecting and refreshing,
   * forgets the tokens (the stored refresh token too) and, if `emit`, tells
   * the app with a `CredentialsChanged` error event. `login` starts again.
   */
  private stopForChangedCredentials(emit = true): void {
    const wasActive = this.auth !== null;
    this.wantConnected = false;
    this.auth = null;
    clearTimeout(this.refreshTimer);
    clearTimeout(this.reconnectTimer);
    this.keys.stop();
    const socket = this.socket;
    this.socket = null;
    this.socketGeneration++;
    socket?.close(CloseCode.Normal, 'credentials changed');
    this.failPendingSends();
    this.setState(ConnectionState.Disconnected);
    this.stores.metadata.saveRefreshToken(null).catch((error: unknown) => this.report(error));
    if (emit && wasActive) {
      this.emit(
        ChatEvent.Error,
        new SecureChatError(SecureChatErrorCode.CredentialsChanged, 'the password was changed elsewhere or the account deleted; sign in again', {
          relayCode: ErrorCode.CredentialsChanged,
        }),
      );
    }
  }

  // --- connection -----------------------------------------------------------

  private setState(state: ConnectionState): void {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this.emit(ChatEvent.ConnectionState, state, previous);
  }

  private async openSocket(): Promise<void> {
    const generation = ++this.socketGeneration;
    const listener = {
      onFrame: (frame: ServerFrame) => {
        if (generation === this.socketGeneration) this.onFrame(frame);
      },
      onClose: (code: number, reason: string) => {
        if (generation === this.socketGeneration) this.onSocketClosed(code, reason);
      },
    };
    // The upgrade is authorized like an HTTP request: refreshed once, and a dead credential stops the client.
    const socket: RelaySocket = await this.authorized((token) => this.transport.openSocket(token, listener));
    if (!this.wantConnected || generation !== this.socketGeneration) {
      socket.close(CloseCode.Normal, 'client closed');
      return;
    }
    this.socket = socket;
    this.backOff.reset();
    this.setState(ConnectionState.Connected);
    void this.pruneMessageLogsIfDue();
    this.keys.start((error) => this.report(error));
    this.maintainKeysInBackground();
  }

  private onSocketClosed(code: number, reason: string): void {
    this.socket = null;
    this.failPendingSends();
    this.keys.stop();
    this.logger.debug?.(`connection closed (${code} ${reason})`);
    if (!this.wantConnected) {
      this.setState(ConnectionState.Disconnected);
      return;
    }
    if (code === CloseCode.CredentialsChanged) {
      const change = this.credentialChange;
      if (!change) {
        this.stopForChangedCredentials();
        return;
      }
      // Our own password change or deletion closed it: go on once the relay has answered.
      this.setState(ConnectionState.Reconnecting);
      change.done.then(
        () => {
          if (change.reconnect && this.wantConnected && !this.socket) this.scheduleReconnect(0, false);
        },
        () => this.stopForChangedCredentials(),
      );
      return;
    }
    if (code === CloseCode.ConnectionReplaced) {
      this.wantConnected = false;
      this.setState(ConnectionState.Disconnected);
      this.emit(
        ChatEvent.Error,
        new SecureChatError(SecureChatErrorCode.ConnectionReplaced, 'another connection of this device replaced this one'),
      );
      return;
    }
    // 4401: the token expired while open; a fresh one is needed, no reason to wait.
    this.scheduleReconnect(code === CloseCode.TokenExpired ? 0 : this.backOff.next(), code === CloseCode.TokenExpired);
  }

  private scheduleReconnect(delayMs: number, refreshFirst: boolean): void {
    this.setState(ConnectionState.Reconnecting);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      void this.reconnect(refreshFirst);
    }, delayMs);
  }

  private async reconnect(refreshFirst: boolean): Promise<void> {
    if (!this.wantConnected) return;
    try {
      if (refreshFirst) await this.refresh();
      await this.openSocket();
    } catch (error) {
      if (!this.wantConnected) return;
      if (SecureChatError.isRelay(error, ErrorCode.CredentialsChanged) || SecureChatError.is(error, SecureChatErrorCode.CredentialsChanged)) {
        this.stopForChangedCredentials();
        return;
      }
      if (SecureChatError.is(error, SecureChatErrorCode.SessionExpired) || isAuthRefusal(error)) {
        this.wantConnected = false;
        this.setState(ConnectionState.Disconnected);
        this.report(error);
        return;
      }
      this.logger.debug?.('reconnect failed; backing off');
      this.scheduleReconnect(this.backOff.next(), false);
    }
  }

  private failPendingSends(): void {
    for (const [requestId, pending] of this.pendingSends) {
      clearTimeout(pending.timer);
      pending.reject(
        new SecureChatError(SecureChatErrorCode.ConnectionLost, 'the connection closed before the relay confirmed the send'),
      );
      this.pendingSends.delete(requestId);
    }
  }

  private onFrame(frame: ServerFrame): void {
    switch (frame.type) {
      case ServerFrameType.Message:
        void this.incoming.add(() => this.receive(frame.envelope));
        return;
      case ServerFrameType.QueueEmpty:
        void this.incoming.add(async () => {
          this.emit(ChatEvent.QueueEmpty);
        });
        return;
      case ServerFrameType.Sent: {
        const pending = this.pendingSends.get(frame.requestId);
        if (!pending) return;
        this.pendingSends.delete(frame.requestId);
        clearTimeout(pending.timer);
        pending.resolve(frame.serverTimestamp);
        return;
      }
      case ServerFrameType.KeysLow:
        this.keys.topUp().catch((error: unknown) => this.report(error));
        return;
      case ServerFrameType.Error: {
        const error = new SecureChatError(
          frame.requestId ? SecureChatErrorCode.RelayRejected : SecureChatErrorCode.RelayError,
          `relay error frame (${frame.code})`,
          { relayCode: frame.code, details: frame.details },
        );
        const pending = frame.requestId ? this.pendingSends.get(frame.requestId) : undefined;
        if (pending && frame.requestId) {
          this.pendingSends.delete(frame.requestId);
          clearTimeout(pending.timer);
          pending.reject(error);
        } else {
          this.emit(ChatEvent.Error, error);
        }
        return;
      }
      default:
        this.logger.debug?.('ignored a frame of unknown type');
    }
  }

  // --- sending --------------------------------------------------------------

  private async devicesWithSession(username: string): Promise<DeviceId[]> {
    const known = await this.stores.metadata.getPeerDevices(username);
    const withSession: DeviceId[] = [];
    for (const deviceId of known) {
      if (await this.sessions.hasSession(username, deviceId)) withSession.push(deviceId);
    }
    return withSession;
  }

  /**
   * Fetches `username`'s bundle and records the identity key it names (see
   * `IdentityTrust.recordBundleKey`), reporting a change.
   * @throws {SecureChatError} `RelayRejected` (`RATE_LIMITED` with `retryAfter`: until then the
   *   relay is not asked again for this user); `InvalidPreKeyBundle`; `IdentityChanged` when the key
   *   changed and is not accepted (after the change is recorded and reported).
   */
  private async fetchBundle(username: string): Promise<PreKeyBundleResponse> {
    this.bundleFetchLimits.assertReady(username);
    let bundle: PreKeyBundleResponse;
    try {
      bundle = await this.authorized((token) => this.transport.getPreKeyBundle(token, username));
    } catch (error) {
      this.bundleFetchLimits.remember(username, error);
      throw error;
    }
    if (canonicalUsername(bundle.username) !== username) {
      throw new SecureChatError(SecureChatErrorCode.InvalidPreKeyBundle, 'the relay answered with a bundle of another user');
    }
    let identityKey: PublicKey;
    try {
      identityKey = PublicKey.deserialize(new Uint8Array(Buffer.from(bundle.identityKey, 'base64')));
    } catch (cause) {
      throw new SecureChatError(SecureChatErrorCode.InvalidPreKeyBundle, `the identity key in the bundle of ${username} is invalid`, { cause });
    }
    const { change, sendable } = await this.transaction((stores) => this.trust.recordBundleKey(stores, username, identityKey));
    if (change) this.emitIdentityChanged(change);
    if (!sendable) throw identityChangedError(username);
    return bundle;
  }

  private async openSessions(username: string): Promise<DeviceId[]> {
    const bundle = await this.fetchBundle(username);
    return this.transaction(async (stores) => {
      const devices = await this.sessions.processBundle(bundle, stores);
      await stores.metadata.savePeerDevices(username, devices);
      return devices;
    });
  }

  private async transmit(to: string, devices: DeviceId[], plaintext: Uint8Array<ArrayBuffer>): Promise<number> {
    // One transaction: each device's ratchet steps forward together or not at all.
    const messages = await this.transaction(async (stores) => {
      const perDevice = [];
      for (const deviceId of devices) {
        const { type, ciphertext } = await this.sessions.encrypt(to, deviceId, plaintext, stores);
        perDevice.push({ deviceId, type, ciphertext: base64(ciphertext) });
      }
      return perDevice;
    });
    return this.post({ to, messages });
  }

  /** Hands a send to the relay and returns its `serverTimestamp`. */
  private async post(request: SendMessageRequest): Promise<number> {
    if (this.socket?.isOpen) return this.sendOverSocket(this.socket, request);
    const response = await this.authorized((token) => this.transport.sendMessage(token, request));
    return response.serverTimestamp;
  }

  /** Strictly increasing, so that (sender, device, timestamp) names one content of this install. */
  private nextContentTimestamp(): number {
    this.lastContentTimestamp = Math.max(this.now(), this.lastContentTimestamp + 1);
    return this.lastContentTimestamp;
  }

  /**
   * Keeps a sent message in the sent-message log for session repair. The
   * message has reached the relay whatever happens here: a store failure is
   * reported, not thrown, so that the app does not send it again.
   */
  private async keepForResend(
    recipient: string,
    devices: DeviceId[],
    timestamp: number,
    serverTimestamp: number,
    content: Uint8Array,
  ): Promise<void> {
    try {
      await this.transaction(async (stores) => {
        for (const recipientDevice of devices) {
          await stores.metadata.saveSentMessage({ recipient, recipientDevice, timestamp, serverTimestamp, content });
        }
      });
    } catch (cause) {
      this.emit(
        ChatEvent.Error,
        new SecureChatError(SecureChatErrorCode.StoreFailure, 'a message was sent but not kept for a resend', { cause }),
      );
    }
    await this.pruneMessageLogsIfDue();
  }

  /** Drops sent and received messages older than `SESSION_REPAIR_WINDOW_MS`, at most once per `MESSAGE_LOG_PRUNE_INTERVAL_MS`. */
  private async pruneMessageLogsIfDue(): Promise<void> {
    const now = this.now();
    if (now - this.messageLogsPrunedAt < MESSAGE_LOG_PRUNE_INTERVAL_MS) return;
    this.messageLogsPrunedAt = now;
    await this.stores.metadata.pruneMessageLogs(now - SESSION_REPAIR_WINDOW_MS).catch((cause: unknown) => {
      this.emit(ChatEvent.Error, new SecureChatError(SecureChatErrorCode.StoreFailure, 'pruning the message logs failed', { cause }));
    });
  }

  private sendOverSocket(socket: RelaySocket, message: SendMessageRequest): Promise<number> {
    const requestId = randomUUID();
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pendingSends.delete(requestId);
        reject(new SecureChatError(SecureChatErrorCode.Timeout, 'the relay did not confirm the send in time'));
      }, this.sendTimeoutMs);
      this.pendingSends.set(requestId, { resolve, reject, timer });
      try {
        socket.send({ type: ClientFrameType.Send, requestId, message });
      } catch (error) {
        clearTimeout(timer);
        this.pendingSends.delete(requestId);
        reject(error);
      }
    });
  }

  // --- receiving ------------------------------------------------------------

  /**
   * Decrypts one envelope and hands it to the app.
   *
   * Ack rules: a message is acked only once the app has it (every listener
   * returned, or the app called `ack()`). A message that can never be read
   * (libsignal refused it and a new session cannot help, or its content is
   * malformed) is reported with an `error` event and then acked, so it is not
   * delivered forever. A store failure is reported and not acked: the relay
   * delivers it again on the next connection. A duplicate (already decrypted,
   * or a resend of a message already delivered) is acked silently. A
   * decrypted message stays in the metadata store's pending messages until
   * its ack, so a redelivery (a listener threw, a reconnect, a restart) is
   * emitted again from there.
   *
   * Session repair (docs/architecture.md): a message a new session can fix
   * is acked once the sender has been asked to start over (or an earlier
   * request covers it); a session reset request is answered by resending.
   * Both run in the sender's serial queue, so no send to that peer
   * interleaves.
   */
  private async receive(envelope: Envelope): Promise<void> {
    const context = envelopeContext(envelope);
    if (!context) {
      this.emit(ChatEvent.Error, new SecureChatError(SecureChatErrorCode.RelayError, 'the relay sent a malformed envelope'));
      return;
    }
    if (this.inFlight.has(context.messageId)) return;

    let received: ReceivedEnvelope;
    try {
      received = await this.sessions.withPeer(context.sender, () => this.receiveFromPeer(envelope, context));
    } catch (cause) {
      if (SecureChatError.is(cause, SecureChatErrorCode.SessionRepairFailed)) {
        this.emit(ChatEvent.Error, cause);
      } else {
        const code = SecureChatError.is(cause, SecureChatErrorCode.StoreTampered) ? cause.code : SecureChatErrorCode.StoreFailure;
        this.emit(ChatEvent.Error, new SecureChatError(code, `message ${context.messageId} left for a retry`, { cause, incoming: context }));
      }
      return;
    }
    if ('dropped' in received) {
      this.emit(ChatEvent.Error, received.dropped);
      await this.ackQuietly(context.messageId);
      return;
    }
    if ('handled' in received) {
      await this.ackQuietly(context.messageId);
      return;
    }
    this.inFlight.add(context.messageId);
    await this.deliver(this.incomingMessage(envelope, context, received.message, received.identity));
  }

  /** Everything about one envelope that needs the sender's serial queue. */
  private async receiveFromPeer(envelope: Envelope, context: IncomingMessageContext): Promise<ReceivedEnvelope> {
    const senderDevice = asDeviceId(context.senderDevice);
    let opened: OpenedMessage;
    try {
      opened = await this.open(envelope, context);
    } catch (cause) {
      if (!(cause instanceof DecryptFailure)) throw cause;
      return this.onUndecryptable(envelope, context, cause);
    }
    if (opened.identityChange) this.emitIdentityChanged(opened.identityChange);
    if (opened.fresh) this.repair.heardFrom(context.sender, senderDevice);
    if ('malformed' in opened) {
      return {
        dropped: new SecureChatError(SecureChatErrorCode.MalformedContent, `message ${context.messageId} has malformed content; dropped`, {
          cause: opened.malformed,
          incoming: context,
        }),
      };
    }
    if ('resetFromNewIdentity' in opened) {
      // Receiving always accepts a new identity key (Signal's policy), but resending past
      // messages to it would hand them to whoever holds it: a relay could claim to be the peer.
      // Whatever the identity policy: even a key trusted at once under 'warn' gets no resend.
      return {
        dropped: new SecureChatError(
          SecureChatErrorCode.UntrustedIdentity,
          `${context.sender} asked for a session reset with a new identity key; nothing was resent`,
          { incoming: context },
        ),
      };
    }
    if ('resendOfDelivered' in opened) {
      this.logger.debug?.(`dropped message ${context.messageId}: a resend of a message already delivered`);
      return { handled: true };
    }
    if (opened.content.kind === ContentKind.SessionResetRequest) {
      await this.answerResetRequest(context, sessionResetSince(opened.content.body));
      return { handled: true };
    }
    return { message: opened.content, identity: opened.identity };
  }

  /**
   * The envelope's content: recalled from the pending messages when it was
   * decrypted before, else decrypted. One store transaction holds the ratchet
   * step, the one-time prekeys it consumes, the peer's identity and device,
   * the received-message log entry and the pending copy, so a crash leaves
   * all of them or none: never a consumed prekey without its session, nor a
   * ratchet step without the message. An identity change the decryption
   * brought (libsignal saves the key it decrypted under, for any message
   * type) is handled in it too.
   * @throws {DecryptFailure} when libsignal refuses the message.
   */
  private open(envelope: Envelope, context: IncomingMessageContext): Promise<OpenedMessage> {
    const senderDevice = asDeviceId(context.senderDevice);
    return this.transaction(async (stores) => {
      const identityNow = async () => {
        const record = await stores.identity.getPeerIdentity(context.sender);
        return record ? identityStatusOf(record) : IdentityStatus.Trusted;
      };
      const pending = await stores.metadata.getPendingMessage(context.messageId);
      if (pending && pending.sender === context.sender && pending.senderDevice === senderDevice) {
        return { ...openContent(pending.content), fresh: false, identityChange: null, identity: await identityNow() };
      }

      const ciphertext = new Uint8Array(Buffer.from(envelope.ciphertext, 'base64'));
      const before = await stores.identity.getPeerIdentity(context.sender);
      const plaintext = await this.sessions.decrypt(context.sender, senderDevice, envelope.type, ciphertext, stores);
      await rememberPeerDevice(stores, context.sender, senderDevice);
      const identityChange = await this.trust.noticeDecrypted(stores, context.sender, senderDevice, before);
      const identity = identityChange ? IdentityStatus.Changed : await identityNow();
      const opened = openContent(plaintext);
      if (!('content' in opened)) return { ...opened, fresh: true, identityChange, identity };
      if (opened.content.kind === ContentKind.SessionResetRequest && identity === IdentityStatus.Changed) {
        return { resetFromNewIdentity: true, fresh: true, identityChange, identity };
      }
      if (isUserContent(opened.content.kind)) {
        const received = { sender: context.sender, senderDevice, timestamp: opened.content.timestamp, contentDigest: sha256(plaintext) };
        if (await stores.metadata.hasReceivedMessage(received)) return { resendOfDelivered: true, fresh: true, identityChange, identity };
        await stores.metadata.saveReceivedMessage({ ...received, receivedAt: this.now() });
      }
      await stores.metadata.savePendingMessage(context.messageId, { sender: context.sender, senderDevice, content: plaintext });
      return { ...opened, fresh: true, identityChange, identity };
    });
  }

  /**
   * A message that did not decrypt. If a new session can fix it, asks the
   * sender device to start over and resend from this envelope on, unless a
   * request sent within the interval covers it or the rate limit forbids
   * another one.
   * @throws {SecureChatError} `SessionRepairFailed` when the request could not be sent (not acked then).
   */
  private async onUndecryptable(envelope: Envelope, context: IncomingMessageContext, failure: DecryptFailure): Promise<ReceivedEnvelope> {
    const dropped = (why: string, cause: unknown = failure): ReceivedEnvelope => ({
      dropped: new SecureChatError(SecureChatErrorCode.DecryptionFailed, `message ${context.messageId} did not decrypt (${failure.kind}); ${why}`, {
        cause,
        incoming: context,
      }),
    });
    if (failure.kind === DecryptFailureKind.Duplicate) {
      this.logger.debug?.(`dropped a duplicate message ${context.messageId}`);
      return { handled: true };
    }
    const reason = RESET_REASON_OF[failure.kind];
    if (!reason) return dropped('dropped');

    const peer = context.sender;
    const device = asDeviceId(context.senderDevice);
    const decision = this.repair.decide(peer, device, envelope.serverTimestamp);
    if (decision === ResetDecision.Covered) {
      this.logger.debug?.(`message ${context.messageId} did not decrypt; the reset request already sent covers it`);
      return { handled: true };
    }
    if (decision === ResetDecision.Limited) return dropped(`a session reset was asked of ${peer} less than ${this.sessionResetIntervalMs} ms ago; dropped`);

    try {
      await this.requestSessionReset(peer, device, envelope.serverTimestamp);
    } catch (cause) {
      // The peer or its device is gone, or its bundle cannot be trusted: asking again cannot help.
      if (
        SecureChatError.isRelay(cause, ErrorCode.UnknownRecipient) ||
        SecureChatError.is(cause, SecureChatErrorCode.InvalidPreKeyBundle) ||
        SecureChatError.is(cause, SecureChatErrorCode.IdentityChanged)
      ) {
        return dropped('the sender cannot be asked to start over; dropped', cause);
      }
      throw new SecureChatError(
        SecureChatErrorCode.SessionRepairFailed,
        `message ${context.messageId} did not decrypt and asking ${peer} to start over failed; left for a retry`,
        { cause, incoming: context },
      );
    }
    this.emitSessionReset({ peer, device, reason, initiator: 'local' });
    return { handled: true };
  }

  /**
   * Makes a new session with the peer device from a fresh bundle (the old
   * state stays archived in the record) and sends a session reset request as
   * its first message, a PreKey message. Run in the peer's serial queue.
   */
  private async requestSessionReset(peer: string, device: DeviceId, since: number): Promise<void> {
    const bundle = await this.fetchBundle(peer);
    const request = await this.transaction(async (stores) => {
      await this.sessions.replaceSession(bundle, device, stores);
      await rememberPeerDevice(stores, peer, device);
      const plaintext = encodeSessionResetRequest(this.nextContentTimestamp(), since);
      const { type, ciphertext } = await this.sessions.encrypt(peer, device, plaintext, stores);
      return { to: peer, messages: [{ deviceId: device, type, ciphertext: base64(ciphertext) }] } satisfies SendMessageRequest;
    });
    await this.post(request);
    this.repair.requested(peer, device, since);
  }

  /**
   * A peer device could not decrypt what this install sent since `since` and
   * has started a new session (the PreKey message that carried the request
   * made it the current one). Resends, on it, every message kept for that
   * device whose latest `serverTimestamp` is at or after `since` and that is
   * younger than `SESSION_REPAIR_WINDOW_MS`, in the order first sent, unless
   * a resend to that device ran within the interval. Run in the peer's
   * serial queue.
   * @throws {SecureChatError} `SessionRepairFailed` when a resend failed (not acked then; the request is answered again).
   */
  private async answerResetRequest(context: IncomingMessageContext, since: number): Promise<void> {
    const peer = context.sender;
    const device = asDeviceId(context.senderDevice);
    this.emitSessionReset({ peer, device, reason: SessionResetReason.PeerRequest, initiator: 'peer' });
    if (!this.repair.mayResend(peer, device)) {
      this.logger.debug?.(`not resending to ${peer} device ${device}: a resend ran less than ${this.sessionResetIntervalMs} ms ago`);
      return;
    }
    const windowStart = this.now() - SESSION_REPAIR_WINDOW_MS;
    const lost = (await this.stores.metadata.getSentMessages(peer, device, since)).filter((message) => message.timestamp >= windowStart);
    try {
      for (const message of lost) {
        const serverTimestamp = await this.transmit(peer, [device], new Uint8Array(message.content));
        // A later request asks from a later serverTimestamp: this copy is the one it must find.
        await this.stores.metadata.saveSentMessage({ ...message, serverTimestamp });
      }
    } catch (cause) {
      throw new SecureChatError(
        SecureChatErrorCode.SessionRepairFailed,
        `resending to ${peer} device ${device} after its reset request failed; left for a retry`,
        { cause, incoming: context },
      );
    }
    this.repair.resent(peer, device);
    this.logger.debug?.(`resent ${lost.length} message(s) to ${peer} device ${device}`);
  }

  private emitSessionReset(reset: SessionReset): void {
    try {
      this.emit(ChatEvent.SessionReset, reset);
    } catch (cause) {
      this.emit(ChatEvent.Error, new SecureChatError(SecureChatErrorCode.ListenerFailed, 'a sessionReset listener threw', { cause }));
    }
  }

  private emitIdentityChanged(change: IdentityChanged): void {
    this.logger.warn?.(`the identity key of ${change.username} changed (${change.status})`);
    try {
      this.emit(ChatEvent.IdentityChanged, change);
    } catch (cause) {
      this.emit(ChatEvent.Error, new SecureChatError(SecureChatErrorCode.ListenerFailed, 'an identityChanged listener threw', { cause }));
    }
  }

  private async deliver(message: IncomingMessage): Promise<void> {
    const listeners = this.listeners(ChatEvent.Message);
    if (listeners.length === 0) {
      // Nobody received it: leave it on the relay.
      this.inFlight.delete(message.id);
      this.logger.warn?.('a message arrived with no message listener; it is not acked');
      return;
    }
    try {
      for (const listener of listeners) await listener(message);
    } catch (cause) {
      this.inFlight.delete(message.id);
      this.emit(
        ChatEvent.Error,
        new SecureChatError(SecureChatErrorCode.ListenerFailed, `a message listener threw; message ${message.id} not acked`, {
          cause,
          incoming: { messageId: message.id, sender: message.sender, senderDevice: message.senderDevice },
        }),
      );
      return;
    }
    if (this.autoAck) await message.ack().catch((error: unknown) => this.report(error));
  }

  private incomingMessage(envelope: Envelope, context: IncomingMessageContext, content: MessageContent, identity: IdentityStatus): IncomingMessage {
    let acked: Promise<void> | undefined;
    const body = content.body.slice();
    return {
      id: asMessageId(context.messageId),
      sender: context.sender,
      senderDevice: asDeviceId(context.senderDevice),
      timestamp: content.timestamp,
      serverTimestamp: envelope.serverTimestamp,
      body,
      ...(content.kind === ContentKind.Text ? { text: decodeText(content.body) } : {}),
      identity,
      ack: () => {
        acked ??= this.ack(context.messageId).catch((error: unknown) => {
          acked = undefined;
          throw error;
        });
        return acked;
      },
    };
  }

  /** @throws {SecureChatError} `AckFailed`. */
  private async ack(messageId: string): Promise<void> {
    try {
      if (this.socket?.isOpen) {
        this.socket.send({ type: ClientFrameType.Ack, id: messageId });
      } else {
        await this.authorized((token) => this.transport.ackMessage(token, messageId));
      }
    } catch (cause) {
      // Already deleted (acked over a socket that then dropped): the goal is met.
      if (!SecureChatError.isRelay(cause, ErrorCode.MessageNotFound)) {
        throw new SecureChatError(SecureChatErrorCode.AckFailed, `ack of message ${messageId} failed`, { cause });
      }
    }
    this.inFlight.delete(messageId);
    await this.stores.metadata.removePendingMessage(messageId).catch((cause: unknown) => {
      // The relay has the ack; a leftover copy is harmless and ages out of the bounded store.
      this.emit(
        ChatEvent.Error,
        new SecureChatError(SecureChatErrorCode.StoreFailure, `message ${messageId} acked; its pending copy was not removed`, { cause }),
      );
    });
  }

  private async ackQuietly(messageId: string): Promise<void> {
    await this.ack(messageId).catch((error: unknown) => this.report(error));
  }

  private report(error: unknown): void {
    this.emit(
      ChatEvent.Error,
      SecureChatError.is(error) ? error : new SecureChatError(SecureChatErrorCode.Network, 'background task failed', { cause: error }),
    );
  }
}

/** Validates decrypted content here, so a malformed one is never kept as pending. */
function openContent(plaintext: Uint8Array): { content: MessageContent } | { malformed: ContentFormatError } {
  try {
    const content = decodeContent(plaintext);
    if (content.kind === ContentKind.Text) decodeText(content.body);
    return { content };
  } catch (cause) {
    if (!(cause instanceof ContentFormatError)) throw cause;
    return { malformed: cause };
  }
}

async function rememberPeerDevice(stores: SecureChatStores, username: string, deviceId: DeviceId): Promise<void> {
  const devices = await stores.metadata.getPeerDevices(username);
  if (!devices.includes(deviceId)) await stores.metadata.savePeerDevices(username, [...devices, deviceId]);
}

function positiveInteger(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < 1) throw new SecureChatError(SecureChatErrorCode.InvalidOptions, `${name} must be a positive integer`);
  return value;
}

function checkUsername(username: string): string {
  const canonical = typeof username === 'string' ? canonicalUsername(username) : '';
  if (!USERNAME_PATTERN.test(canonical)) throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'not a valid username');
  return canonical;
}

function checkPassword(password: string): string {
  if (typeof password !== 'string' || password.length === 0 || password.length > PASSWORD_MAX_LENGTH) {
    throw new SecureChatError(SecureChatErrorCode.InvalidArgument, `password must be 1..${PASSWORD_MAX_LENGTH} characters`);
  }
  return password;
}

function isAuthRefusal(error: unknown): boolean {
  return (
    SecureChatError.isRelay(error, ErrorCode.InvalidToken) ||
    SecureChatError.isRelay(error, ErrorCode.AuthenticationRequired) ||
    SecureChatError.isRelay(error, ErrorCode.TokenExpired)
  );
}

/** The envelope's routing fields, checked; null when the relay sent something malformed. */
function envelopeContext(envelope: Envelope): IncomingMessageContext | null {
  if (
    typeof envelope !== 'object' ||
    envelope === null ||
    typeof envelope.id !== 'string' ||
    typeof envelope.source !== 'string' ||
    !USERNAME_PATTERN.test(envelope.source) ||
    !Number.isInteger(envelope.sourceDevice) ||
    envelope.sourceDevice < DEVICE_ID_MIN ||
    envelope.sourceDevice > DEVICE_ID_MAX ||
    (envelope.type !== EnvelopeType.PreKey && envelope.type !== EnvelopeType.Signal) ||
    typeof envelope.ciphertext !== 'string' ||
    typeof envelope.serverTimestamp !== 'number'
  ) {
    return null;
  }
  return { messageId: envelope.id, sender: envelope.source, senderDevice: envelope.sourceDevice };
}
