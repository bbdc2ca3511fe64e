import { createHash, randomUUID } from 'node:crypto';
import PQueue from 'p-queue';
import { CiphertextMessageType, PrivateKey, ProtocolAddress, PublicKey, type SenderCertificate } from '@signalapp/libsignal-client';
import type {
  AuthResponse,
  BackupResponse,
  Envelope,
  PreKeyBundleResponse,
  ProvisioningSlotResponse,
  SealedSendRequest,
  SendMessageRequest,
  ServerFrame,
} from '@chat/protocol';
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
  PROVISIONING_SECRET_PATTERN,
  ServerFrameType,
  USERNAME_PATTERN,
  canonicalUsername,
} from '@chat/protocol';
import { exportAccountState, restoreAccountState } from './backup/account-backup.js';
import { DEFAULT_BACKUP_KDF, isSupportedKdf, openBackup, sealBackup, type BackupKdfParams } from './backup/backup-format.js';
import { parseRecoverySecret } from './backup/recovery-secret.js';
import { DEFAULT_LINK_POLL_INTERVAL_MS, awaitProvisioningMessage } from './devices/device-linking.js';
import { formatLinkUri, parseLinkUri } from './devices/link-uri.js';
import { openProvisioningMessage, sealProvisioningMessage } from './devices/provisioning-message.js';
import { SecureChatError, SecureChatErrorCode, type IncomingMessageContext } from './errors.js';
import {
  ChatEvent,
  ConnectionState,
  SessionResetReason,
  TypedEventEmitter,
  type ChatEventHandlerMap,
  type IncomingMessage,
  type MessagesMissing,
  type Receipt,
  type SessionReset,
  type Typing,
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
import { asDeviceId, asMessageId, derivedRequestId, type DeviceId } from './ids.js';
import { amendStores } from './stores/memory-stores.js';
import { SESSION_REPAIR_WINDOW_MS, type OutgoingMessageRecord, type AccountRecord, type LocalIdentity, type SecureChatStores } from './stores/stores.js';
import {
  ContentFormatError,
  ContentKind,
  MAX_BODY_BYTES,
  decodeContent,
  decodeText,
  encodeContent,
  encodeSessionResetRequest,
  encodeSyncCopy,
  sessionResetSince,
  MAX_RECEIPT_TIMESTAMPS,
  ReceiptType,
  TypingAction,
  encodeReceipt,
  encodeTyping,
  encodeProfileKey,
  profileKeyOf,
  receiptOf,
  syncCopyOf,
  typingOf,
  type MessageContent,
} from './session/content.js';
import { DecryptFailure, DecryptFailureKind, PeerSessions } from './session/peer-sessions.js';
import {
  countMissing,
  groupOfSequenceKey,
  groupSequenceKey,
  nextSequence,
  observeSequence,
  type SequenceRange,
  type SequenceTrack,
} from './session/message-sequence.js';
import { DEFAULT_SESSION_RESET_INTERVAL_MS, ResetDecision, SessionRepairLimiter } from './session/session-repair.js';
import {
  DEFAULT_KEY_GRACE_PERIOD_MS,
  DEFAULT_KEY_MAINTENANCE_INTERVAL_MS,
  DEFAULT_KEY_ROTATION_INTERVAL_MS,
  KeyMaintenance,
} from './keys/key-maintenance.js';
import { generateLocalIdentity } from './keys/prekeys.js';
import { BackOff, type BackOffOptions } from './transport/back-off.js';
import { HttpRelayTransport, deviceListsOf, relayUrlsOf } from './transport/http-relay-transport.js';
import type { RelaySocket, RelayTransport } from './transport/relay-transport.js';
import { RetryAfterMemory } from './transport/retry-after.js';
import { parseGroupUpdateBody } from './groups/group-wire.js';
import { DuplicateGroupMessage } from './groups/group-crypto.js';
import { GroupService, newGroupSendId, type GroupHost, type GroupInfo, type GroupUpdated, type SentGroupMessage } from './groups/group-service.js';
import {
  AccountIds,
  SenderCertificateCache,
  accessKeyOf,
  generateProfileKey,
  normalizeAccountId,
  parseTrustRoot,
  sealFor,
  unseal,
  type UnsealedMessage,
} from './sealed/index.js';

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
  /**
   * Send a delivery receipt to the sender of each message once the `message`
   * listeners have returned (default true); receipts for one sender are
   * batched while more messages are waiting. Never for a sync copy.
   */
  deliveryReceipts?: boolean;
  /**
   * Sealed sender (docs/protocol.md, "Sealed sender (client side)"): the
   * trust root of the relay's sender certificates, base64 of a 33-byte
   * public key, configured out of band (never fetched from the relay).
   * With it, messages to a peer whose profile key is known go sealed (the
   * relay does not learn the sender) and sealed messages are accepted when
   * their certificate validates. Without it, nothing is sent sealed and
   * sealed messages are dropped (`InvalidSenderCertificate`).
   */
  trustRoot?: string;
  /** Accept sealed messages from anyone, not only from holders of this account's profile key (default false). */
  sealedSenderFromAnyone?: boolean;
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
  /** The send's UUID: the one passed to `send`, or a fresh one. The relay stores a repeat of it only once. */
  id: string;
  /** The timestamp put inside the encrypted content. */
  timestamp: number;
  /** When the relay stored the message. */
  serverTimestamp: number;
  /** The recipient devices the message was encrypted for. */
  devices: DeviceId[];
  /** This account's other devices that got a sync copy. */
  syncDevices: DeviceId[];
}

/** Options of `send`. */
export interface SendOptions {
  /**
   * The send's UUID (default: a fresh one). Pass the id of an earlier send
   * to make a retry of it: while that send is still in the outbox, this call
   * waits for it (the new body is not used); once the relay accepted it, the
   * relay stores nothing again and answers as it did then.
   */
  id?: string;
}

/** A `send()` call of this run waiting for its outbox entry. */
interface OutboxWaiter {
  promise: Promise<SentMessage>;
  resolve(sent: SentMessage): void;
  reject(error: SecureChatError): void;
}

/** What a fan-out sends besides `messages`. */
interface FanOutOptions {
  /** The relay request's `id` (idempotency). */
  id?: string;
  /** Content for the sender's other devices (`sync`); none when the recipient is this account. */
  syncContent?: Uint8Array<ArrayBuffer>;
  ephemeral?: boolean;
}

interface FanOutResult {
  serverTimestamp: number;
  devices: DeviceId[];
  syncDevices: DeviceId[];
}

/** What `beginLinking` returns. */
export interface LinkingSession {
  /** The link URI to show (as a QR code) to a signed-in device of the account, for `approveLink`. */
  uri: string;
  /** Resolves once this install is the account's new device, signed in with its keys uploaded. */
  completion: Promise<void>;
}

/** One device of the account, as `listDevices` returns it. */
export interface AccountDevice {
  deviceId: DeviceId;
  /** When it was registered or linked, ms since the epoch. */
  createdAt: number;
  /** Whether it has uploaded its keys (only such devices receive messages). */
  hasKeys: boolean;
  /** This install's own device. */
  current: boolean;
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
/** What following a received message's sequence found (docs/architecture.md, "Gap detection"). */
interface SequenceSeen {
  track: Pick<SequenceTrack, 'sender' | 'senderDevice' | 'recipient'>;
  /** The numbers this message showed missing, or null. */
  missing: SequenceRange | null;
  /** It had been reported missing. */
  filledGap: boolean;
}

type OpenedMessage = (
  | { content: MessageContent; sequence?: SequenceSeen }
  | { malformed: ContentFormatError }
  | { resendOfDelivered: true }
  | { resetFromNewIdentity: true }
  | { alreadyProcessed: true }
) & {
  fresh: boolean;
  /** The sender's key changed in this decryption. */
  identityChange: IdentityChanged | null;
  /** How the sender's key stands for this message. */
  identity: IdentityStatus;
};

/** What became of an envelope: a message for the app, nothing more to do (ack it), or unreadable (report, then ack). */
type ReceivedEnvelope =
  | {
      message: MessageContent;
      identity: IdentityStatus;
      sequence?: SequenceSeen;
      /** A group message (kind 10): its group, and who sent it (the sealed certificate's sender). */
      group?: { id: string; title: string; from: IncomingMessageContext };
    }
  | { receipt: Receipt }
  | { typing: Typing }
  | { handled: true }
  | { dropped: SecureChatError };

/** Where a sealed message came from: the identity key its sender certificate names. */
interface SealedOrigin {
  certificateKey: PublicKey;
}

/** The sender certificate named another key than the session's identity key: the decryption is rolled back and the message dropped. */
class SealedSenderKeyMismatch extends Error {
  override readonly name = 'SealedSenderKeyMismatch';
}

/** With no other own device known, a sealed send with sync copies checks this account's bundle at most this often. */
const OWN_DEVICES_CHECK_INTERVAL_MS = 60 * 60 * 1000;

/** Refresh this long before the access token expires (at most a fifth of its lifetime). */
const REFRESH_MARGIN_MS = 60_000;

/** How often the sent and received message logs are pruned to `SESSION_REPAIR_WINDOW_MS`. */
const MESSAGE_LOG_PRUNE_INTERVAL_MS = 60 * 60 * 1000;

const RESET_REASON_OF: Partial<Record<DecryptFailureKind, SessionResetReason>> = {
  [DecryptFailureKind.NoSession]: SessionResetReason.NoSession,
  [DecryptFailureKind.InvalidMessage]: SessionResetReason.InvalidMessage,
  [DecryptFailureKind.UnknownPreKey]: SessionResetReason.UnknownPreKey,
};

/** Correction rounds after a 409 or 410 before a fan-out gives up (docs/architecture.md, "Fan-out and device correction"). */
const MAX_DEVICE_CORRECTIONS = 3;

/** The relay's `@IsUUID()`: any version. */
const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

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
  /** Set when the relay says this device was unlinked: like `accountDeleted`, the client is of no further use. */
  private deviceUnlinked = false;
  /** A `beginLinking` is under way; `close()` aborts it. */
  private linking: AbortController | null = null;

  private state = ConnectionState.Disconnected;
  private wantConnected = false;
  private socket: RelaySocket | null = null;
  private socketGeneration = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private readonly pendingSends = new Map<string, PendingSend>();
  /** The `send()` calls of this run awaiting their outbox entry, by send id. */
  private readonly outboxWaiters = new Map<string, OutboxWaiter>();
  /** The one sender loop, while it runs (docs/architecture.md, "The outbox"). */
  private outboxRun: Promise<void> | undefined;
  /** A `send()` or a connect asked for the loop while it ran: it runs again when it stops. */
  private outboxKicked = false;
  /** Ends a loop's wait before a retry (a reconnect, or `close`). */
  private outboxWake: (() => void) | undefined;
  /** Spaces retries of a send the relay failed while the socket stayed open (timeout, 5xx). */
  private readonly outboxBackOff: BackOff;
  /** Incoming frames are handled one at a time, in the order the relay sent them. */
  private readonly incoming = new PQueue({ concurrency: 1 });
  /**
   * Messages whose listeners are running or whose `ack()` the app has not
   * called yet: a redelivery of one of them is ignored. Their decrypted
   * content is kept in the metadata store's pending messages until the ack.
   */
  private readonly inFlight = new Set<string>();
  private readonly deliveryReceipts: boolean;
  /** Content timestamps of messages handed to the app whose delivery receipt is not sent yet, per sender. */
  private readonly deliveryReceiptBatches = new Map<string, number[]>();
  // Sealed sender (docs/architecture.md, "Sealed sender").
  private readonly trustRoot: PublicKey | null;
  private readonly sealedSenderFromAnyone: boolean;
  /** This device's sender certificate; null without a trust root (nothing is sent sealed). */
  private readonly certificates: SenderCertificateCache | null;
  private readonly accountIds: AccountIds;
  /** Groups (docs/architecture.md, "Groups"). */
  private readonly groupService: GroupService;
  /** This account's id, from the relay's auth answer. */
  private ownAccountId: string | null = null;
  private ownDevicesCheckedAt = Number.NEGATIVE_INFINITY;

  private constructor(options: SecureChatClientOptions) {
    super();
    this.stores = amendStores(options.stores);
    this.transport = options.transport ?? new HttpRelayTransport(options.relayUrl);
    this.autoAck = options.autoAck ?? true;
    this.backOff = new BackOff(options.backOff);
    this.outboxBackOff = new BackOff(options.backOff);
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
    this.deliveryReceipts = options.deliveryReceipts ?? true;
    // Once no incoming frame is waiting: a backlog is acknowledged in few receipts.
    this.incoming.on('idle', () => this.flushDeliveryReceipts());
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
    this.groupService = new GroupService(this.groupHost());
    this.trustRoot = options.trustRoot === undefined ? null : parseTrustRoot(options.trustRoot);
    this.sealedSenderFromAnyone = options.sealedSenderFromAnyone ?? false;
    if (typeof this.sealedSenderFromAnyone !== 'boolean') throw new SecureChatError(SecureChatErrorCode.InvalidOptions, 'sealedSenderFromAnyone must be a boolean');
    this.certificates = this.trustRoot
      ? new SenderCertificateCache(() => this.authorized((token) => this.transport.getSenderCertificate(token)), this.trustRoot, this.now)
      : null;
    this.accountIds = new AccountIds((accountId) => this.authorized((token) => this.transport.lookupAccount(token, accountId)));
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
    await this.publishAccessKeyReporting(true);
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
    // A linked install signs in as its own device, not the primary.
    await this.keepAuth(await this.transport.login({ username, password: checkPassword(password) }, stored?.deviceId));
    await this.saveAccount();
    await this.maintainKeys();
    // Only the primary makes a profile key: a linked device without one (an older approver) makes none.
    await this.publishAccessKeyReporting(this.localAccount().deviceId === 1);
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
   * Queues `body` for `username` in the outbox (the metadata store) and
   * resolves once the relay accepted it. One sender loop sends the outbox in
   * order, one message at a time, so messages to a peer arrive in the order
   * sent (docs/architecture.md, "The outbox"). Each message is encrypted for
   * every device of `username` and, as a sync copy, for this account's other
   * devices; the relay's 409 and 410 answers are corrected and retried
   * (fetching bundles, dropping sessions of devices that left). A session
   * with a peer starts from its prekey bundle (PQXDH); a bundle whose
   * identity key differs from the known one is an identity change
   * (`identityChanged`), and under `identityPolicy: 'block'` nothing is sent
   * to the new key until the app accepts it.
   *
   * A transient failure (`Network`, `ConnectionLost`, `Timeout`, a relay 5xx)
   * after `connect()` keeps the message queued and this call waiting: it is
   * sent again, same id, once reconnected (or after a back-off while the
   * socket stays open). Without `connect()` (or after `close()`), this call
   * rejects with the transient error and the message stays queued: the next
   * `send` or `connect` sends it first, and reports it with `sent` or
   * `sendFailed`. A permanent refusal removes it and rejects.
   * @throws {SecureChatError} `InvalidArgument`, `InvalidState`, a store's failure (nothing queued);
   *   then `RelayRejected` (e.g. `UNKNOWN_RECIPIENT`, `MISMATCHED_DEVICES` after 3 corrections, or
   *   `RATE_LIMITED` with `retryAfter` for the bundle fetch), `InvalidPreKeyBundle`, `IdentityChanged`,
   *   `EncryptionFailed` (removed from the outbox); `Network`, `ConnectionLost`, `Timeout` (not connected:
   *   still queued); `CredentialsChanged`, `SessionExpired`, `DeviceUnlinked`, `StoreFailure` (still queued).
   */
  async send(username: string, body: string | Uint8Array, options: SendOptions = {}): Promise<SentMessage> {
    this.requireAuth();
    const to = checkUsername(username);
    const isText = typeof body === 'string';
    const bytes = isText ? new TextEncoder().encode(body) : body;
    if (!isText && !(bytes instanceof Uint8Array)) {
      throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'body must be a string or a Uint8Array');
    }
    if (bytes.length > MAX_BODY_BYTES) {
      throw new SecureChatError(SecureChatErrorCode.InvalidArgument, `body larger than ${MAX_BODY_BYTES} bytes`);
    }
    const id = options.id ?? randomUUID();
    if (typeof id !== 'string' || !UUID_PATTERN.test(id)) throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'id must be a UUID');

    const waiting = this.outboxWaiters.get(id);
    if (waiting) return waiting.promise;
    // Only an id the caller chose can be queued already (a retry of an earlier send).
    const queued = options.id !== undefined && (await this.stores.metadata.getOutgoing()).some((message) => message.id === id);
    if (!queued) {
      // The message takes the next number of this install's sequence to `to` (docs/architecture.md,
      // "Gap detection") in the transaction that queues it: a number is never used twice, nor skipped.
      await this.transaction(async (stores) => {
        const timestamp = this.nextContentTimestamp();
        const sequence = nextSequence(await stores.metadata.getSendSequence(to));
        const content = encodeContent({ kind: isText ? ContentKind.Text : ContentKind.Bytes, timestamp, body: bytes, sequence });
        await stores.metadata.saveSendSequence(to, sequence);
        await stores.metadata.saveOutgoing({ id, recipient: to, content, timestamp, queuedAt: this.now() });
      });
    }
    const waiter = this.outboxWaiters.get(id) ?? newOutboxWaiter();
    this.outboxWaiters.set(id, waiter);
    this.kickOutbox();
    return waiter.promise;
  }

  /** Closes the connection and stops reconnecting, refreshing and key maintenance. Unacked messages stay on the relay. */
  async close(): Promise<void> {
    this.wantConnected = false;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.refreshTimer);
    this.keys.stop();
    this.linking?.abort(new SecureChatError(SecureChatErrorCode.InvalidState, 'the client was closed while linking'));
    this.socketGeneration++;
    const socket = this.socket;
    this.socket = null;
    socket?.close(CloseCode.Normal, 'client closed');
    this.failPendingSends();
    this.wakeOutbox();
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
   * Checks a safety number against the keys this install holds and, if they
   * match, marks the peer's current key verified (and trusted). `compared` is
   * either the scannable form read from the peer's QR code (libsignal
   * `ScannableFingerprint.compare`), or the 60 displayable digits the user
   * compared with the peer's screen (for apps that cannot scan; spaces are
   * ignored). A later change of that key makes it unverified again and is
   * reported with `wasVerified`.
   * @throws {SecureChatError} `SafetyNumberMismatch` (nothing changes then), `InvalidArgument`,
   *   `InvalidState`, `NoLocalIdentity`, `UnknownIdentity`.
   */
  async verifySafetyNumber(username: string, compared: Uint8Array | string): Promise<void> {
    const peer = checkUsername(username);
    if (!(compared instanceof Uint8Array) && typeof compared !== 'string') {
      throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'compared must be a Uint8Array or a string of digits');
    }
    const local = await this.localParty();
    await this.sessions.withPeer(peer, () => this.transaction((stores) => this.trust.verify(stores, local, peer, compared)));
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

  // --- devices ----------------------------------------------------------------

  /**
   * Makes this new install (empty stores, not signed in) a new device of an
   * existing account (docs/architecture.md, "Linking a device"). Opens a
   * provisioning slot at the relay and a fresh ephemeral key pair, whose
   * private half stays in memory, and returns the link URI to show to a
   * signed-in device of the account, which passes it to `approveLink`.
   * `completion` then asks the relay every `pollIntervalMs` (default 2 s)
   * whether the link was approved; once it was, opens the sealed message,
   * links the device, saves the account's identity key pair with a fresh
   * registration id, signs in as the new device (the refresh token is kept
   * for `resume`) and uploads its keys. Afterwards `login` and `resume` work
   * as for any install.
   * @throws {SecureChatError} `InvalidArgument` (a `pollIntervalMs` that is not a positive integer),
   *   `InvalidState` (the stores already hold an identity or account, this client is signed in, or a
   *   linking is under way), `RelayRejected` (e.g. `RATE_LIMITED`), `Network`.
   *   `completion` rejects with `LinkExpired` (not approved before the slot expired), `DecryptionFailed`
   *   or `MalformedContent` (the sealed message does not open or is not a valid provisioning message),
   *   `RelayRejected` (e.g. `TOO_MANY_DEVICES`), `Network`, or `signal.reason` once aborted; nothing is
   *   saved in the stores before the relay has linked the device. `close()` aborts it too (`InvalidState`).
   */
  async beginLinking(options: { pollIntervalMs?: number; signal?: AbortSignal } = {}): Promise<LinkingSession> {
    this.assertNotDeleted();
    const pollIntervalMs = options.pollIntervalMs ?? DEFAULT_LINK_POLL_INTERVAL_MS;
    if (!Number.isSafeInteger(pollIntervalMs) || pollIntervalMs < 1) {
      throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'pollIntervalMs must be a positive integer');
    }
    if (this.auth || this.linking) throw new SecureChatError(SecureChatErrorCode.InvalidState, 'this client is signed in or already linking');
    options.signal?.throwIfAborted();
    const linking = new AbortController();
    this.linking = linking;
    const signal = options.signal ? AbortSignal.any([options.signal, linking.signal]) : linking.signal;
    let slot: ProvisioningSlotResponse;
    const ephemeral = PrivateKey.generate();
    let uri: string;
    try {
      await this.assertFreshInstall();
      slot = checkProvisioningSlot(await this.transport.createProvisioningSlot());
      uri = formatLinkUri({ slotId: slot.id, publicKey: ephemeral.getPublicKey() });
    } catch (error) {
      this.linking = null;
      throw error;
    }
    const completion = this.completeLinking(slot, ephemeral, pollIntervalMs, signal).finally(() => {
      this.linking = null;
    });
    // The app awaits `completion`; until it does, a rejection must not end the process.
    completion.catch(() => undefined);
    return { uri, completion };
  }

  /**
   * Approves a new device's link request: seals this account's identity key
   * pair and username to the key in `uri` (libsignal HPKE, bound to the
   * slot) and hands the sealed message to the relay, which cannot read it.
   * Only pass a URI the user scanned from their own new device: whoever
   * holds its key gets the account's identity key.
   * @throws {SecureChatError} `InvalidArgument` (not a link URI), `InvalidState` before sign-in,
   *   `NoLocalIdentity`, `RelayRejected` (`PROVISIONING_NOT_FOUND`: unknown, expired or already approved;
   *   `TOO_MANY_DEVICES`), `DeviceUnlinked`, `CredentialsChanged`, `Network`.
   */
  async approveLink(uri: string): Promise<void> {
    this.requireAuth();
    const link = parseLinkUri(uri);
    const identity = await this.stores.identity.getLocalIdentity();
    if (!identity) throw new SecureChatError(SecureChatErrorCode.NoLocalIdentity, 'the stores hold no identity key');
    const profileKey = (await this.stores.metadata.getOwnProfileKey()) ?? undefined;
    const sealed = sealProvisioningMessage(
      { username: this.localAccount().username, identityKeyPair: identity.identityKeyPair, profileKey },
      link.publicKey,
      link.slotId,
    );
    await this.authorized((token) => this.transport.putProvisioningMessage(token, link.slotId, { message: base64(sealed) }));
  }

  /**
   * The account's devices, ascending by id.
   * @throws {SecureChatError} `InvalidState` before sign-in, `RelayRejected`, `DeviceUnlinked`, `Network`.
   */
  async listDevices(): Promise<AccountDevice[]> {
    this.requireAuth();
    const answer = await this.authorized((token) => this.transport.listDevices(token));
    if (!Array.isArray(answer?.devices)) throw new SecureChatError(SecureChatErrorCode.Network, 'the relay answered without a device list');
    const own = this.account?.deviceId;
    return answer.devices.map((device) => ({
      deviceId: asDeviceId(device.deviceId),
      createdAt: device.createdAt,
      hasKeys: device.hasKeys,
      current: device.deviceId === own,
    }));
  }

  /**
   * Unlinks a device of the account: the relay deletes it with its keys and
   * queued messages, and that install stops with `DeviceUnlinked`. Peers
   * learn of it at their next send (410) and drop their sessions with it.
   * Unlinking this install's own device ends this client the same way.
   * @throws {SecureChatError} `InvalidArgument` (not a device id), `InvalidState` before sign-in,
   *   `RelayRejected` (`PRIMARY_DEVICE` for device 1, `DEVICE_NOT_FOUND`), `DeviceUnlinked`, `Network`.
   */
  async unlinkDevice(deviceId: number): Promise<void> {
    this.requireAuth();
    if (!Number.isInteger(deviceId) || deviceId < DEVICE_ID_MIN || deviceId > DEVICE_ID_MAX) {
      throw new SecureChatError(SecureChatErrorCode.InvalidArgument, `deviceId must be ${DEVICE_ID_MIN}..${DEVICE_ID_MAX}`);
    }
    await this.authorized((token) => this.transport.unlinkDevice(token, deviceId));
  }

  private async completeLinking(slot: ProvisioningSlotResponse, ephemeral: PrivateKey, pollIntervalMs: number, signal?: AbortSignal): Promise<void> {
    const sealed = await awaitProvisioningMessage(this.transport, slot, { pollIntervalMs, signal, now: this.now });
    const contents = openProvisioningMessage(sealed, ephemeral, slot.id);
    signal?.throwIfAborted();
    await this.assertFreshInstall();
    const auth = await this.transport.linkDevice({ provisioningId: slot.id, secret: slot.secret });
    if (canonicalUsername(auth.username) !== contents.username) {
      throw new SecureChatError(SecureChatErrorCode.MalformedContent, 'the provisioning message names another account than the relay linked');
    }
    const account: AccountRecord = { username: contents.username, deviceId: asDeviceId(auth.deviceId) };
    // Every device of the account shares its identity key; the registration id is the device's own.
    const identity: LocalIdentity = { identityKeyPair: contents.identityKeyPair, registrationId: generateLocalIdentity().registrationId };
    await this.transaction(async (stores) => {
      await stores.identity.saveLocalIdentity(identity);
      await stores.metadata.saveAccount(account);
      if (contents.profileKey) await stores.metadata.saveOwnProfileKey(contents.profileKey);
    });
    await this.keepAuth(auth);
    await this.keys.uploadInitialKeys();
    await this.publishAccessKeyReporting(false);
  }

  /** @throws {SecureChatError} `InvalidState` when the stores already hold an identity or an account. */
  private async assertFreshInstall(): Promise<void> {
    if ((await this.stores.identity.getLocalIdentity()) || (await this.stores.metadata.getAccount())) {
      throw new SecureChatError(SecureChatErrorCode.InvalidState, 'linking needs empty stores; these already hold an identity or account');
    }
  }

  /**
   * The relay says this device was unlinked: its tokens are dead for good.
   * Stops like a credential change (connection, refresh, keys; the stored
   * refresh token is cleared), closes the client and tells the app once.
   */
  private stopForUnlinkedDevice(cause?: unknown): SecureChatError {
    const error = new SecureChatError(SecureChatErrorCode.DeviceUnlinked, 'this device was unlinked from the account', {
      cause,
      relayCode: ErrorCode.DeviceUnlinked,
    });
    const first = !this.deviceUnlinked;
    this.deviceUnlinked = true;
    this.stopForChangedCredentials(false);
    if (first) this.emit(ChatEvent.Error, error);
    return error;
  }

  // --- groups (docs/architecture.md, "Groups") ---------------------------------

  /**
   * The groups this install knows, this account's own removal from one
   * included (`member: false`), by id.
   * @throws {SecureChatError} `InvalidState` before sign-in, a store's failure.
   */
  async groups(): Promise<GroupInfo[]> {
    this.requireAuth();
    return this.groupService.groups();
  }

  /**
   * Creates a group with this account as its only admin and `members`
   * (usernames; this account is added anyway), then sends its state and
   * this device's sender key to every member device and this account's
   * other devices, over the 1:1 sessions. A member that cannot be reached
   * (e.g. its identity key changed under `'block'`) is reported with an
   * `error` event; the others still get the group. Needs `trustRoot`.
   * @throws {SecureChatError} `InvalidArgument` (a bad title or username, more than `MAX_GROUP_MEMBERS`),
   *   `InvalidState` (not signed in, no `trustRoot`), `RelayRejected` (`UNKNOWN_RECIPIENT` for a member
   *   that does not exist), `Network`, ...
   */
  async createGroup(title: string, members: string[]): Promise<GroupInfo> {
    this.requireGroups();
    if (!Array.isArray(members)) throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'members must be an array of usernames');
    return this.groupService.createGroup(title, members.map(checkUsername));
  }

  /**
   * Adds members (an admin only): the new state goes to every member device,
   * and this device's sender key from now on to the new ones, no history.
   * Other members give them their keys before their next group message.
   * @throws {SecureChatError} `InvalidArgument` (unknown group, bad username), `InvalidState` (not an admin), as `createGroup`.
   */
  async addGroupMembers(groupId: string, members: string[]): Promise<GroupInfo> {
    this.requireGroups();
    if (!Array.isArray(members)) throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'members must be an array of usernames');
    return this.groupService.addGroupMembers(groupId, members.map(checkUsername));
  }

  /**
   * Removes a member (an admin only; not the last admin). The new state goes
   * to the remaining members and to the removed one; this device starts a
   * new sender key and gives it to the remaining member devices only, and
   * every other remaining member device does the same when the update
   * reaches it. The removed member cannot read what is sent afterwards.
   * @throws {SecureChatError} `InvalidArgument` (unknown group, not a member, the last admin), `InvalidState` (not an admin), as `createGroup`.
   */
  async removeGroupMember(groupId: string, username: string): Promise<GroupInfo> {
    this.requireGroups();
    return this.groupService.removeGroupMember(groupId, checkUsername(username));
  }

  /**
   * Sends `body` to the group: encrypted once with this device's sender key
   * for the group and uploaded ONCE as a multi-recipient sealed-sender
   * message to every member device, this account's other devices included;
   * the relay stores one part per device. Sealed (the relay does not learn
   * the sender) when every member's access key is known, else the
   * authenticated fallback. Not queued in the outbox: a failure rejects,
   * and a retry with the same `id` is stored once.
   * @throws {SecureChatError} `InvalidArgument`, `InvalidState` (not a member, no `trustRoot`),
   *   `InvalidSenderCertificate`, `RelayRejected`, `Network`, ...
   */
  async sendGroupMessage(groupId: string, body: string | Uint8Array, options: SendOptions = {}): Promise<SentGroupMessage> {
    this.requireGroups();
    const isText = typeof body === 'string';
    const bytes = isText ? new TextEncoder().encode(body) : body;
    if (!isText && !(bytes instanceof Uint8Array)) throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'body must be a string or a Uint8Array');
    const id = options.id ?? newGroupSendId();
    if (typeof id !== 'string' || !UUID_PATTERN.test(id)) throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'id must be a UUID');
    return this.groupService.sendGroupMessage(groupId, isText ? ContentKind.Text : ContentKind.Bytes, bytes, id);
  }

  private requireGroups(): void {
    this.requireAuth();
    if (!this.certificates) throw new SecureChatError(SecureChatErrorCode.InvalidState, 'groups need the trustRoot option (their messages go sealed)');
  }

  /**
   * A group control record to this account's other devices, authenticated:
   * a sealed send to the own account cannot leave out the sending device (the
   * relay does not know it) and is refused 409. Corrects 409/410 like a
   * fan-out. Run in this account's serial queue.
   * @throws {SecureChatError} `RelayRejected` (`UNKNOWN_RECIPIENT`: no other device), `Network`, ...
   */
  private async sendToOwnDevices(plaintext: Uint8Array<ArrayBuffer>): Promise<DeviceId[]> {
    const own = this.localAccount().username;
    for (let round = 0; ; round++) {
      let devices = await this.addressedDevices(own);
      if (devices.length === 0) devices = await this.openSessions(own);
      if (devices.length === 0) throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'this account has no other device to send to');
      const messages = await this.transaction((stores) => this.encryptFor(own, devices, plaintext, stores));
      try {
        await this.post({ to: own, messages });
        return devices;
      } catch (error) {
        if (round >= MAX_DEVICE_CORRECTIONS || !(await this.correctDevices(own, error))) throw error;
      }
    }
  }

  /** What the group service may use of this client. */
  private groupHost(): GroupHost {
    return {
      stores: this.stores,
      transaction: (fn) => this.transaction(fn),
      localAccount: () => this.localAccount(),
      ownAccountId: async () => {
        if (!this.ownAccountId) throw new SecureChatError(SecureChatErrorCode.InvalidState, 'the relay named no account id for this account');
        return this.ownAccountId;
      },
      nextContentTimestamp: () => this.nextContentTimestamp(),
      accountIdOf: async (username) => {
        const known = await this.stores.metadata.getAccountId(username);
        if (known) return known;
        await this.sessions.withPeer(username, () => this.openSessions(username));
        const learnt = await this.stores.metadata.getAccountId(username);
        if (!learnt) throw new SecureChatError(SecureChatErrorCode.InvalidPreKeyBundle, `the bundle of ${username} names no account id`);
        return learnt;
      },
      // This account's other devices are those it has sessions with (a 409 of a send teaches it new ones);
      // a peer's are fetched from its bundle when there are none.
      devicesOf: (username) =>
        this.sessions.withPeer(username, async () => {
          const devices = await this.addressedDevices(username);
          return devices.length > 0 || username === this.localAccount().username ? devices : this.openSessions(username);
        }),
      sendContent: async (username, plaintext) => {
        if (username === this.localAccount().username) return this.sessions.withPeer(username, () => this.sendToOwnDevices(plaintext));
        await this.sessions.withPeer(username, () => this.shareProfileKey(username));
        return (await this.transmitContent(username, plaintext)).devices;
      },
      correctDevices: async (error) => {
        const named = [
          ...(SecureChatError.isRelay(error, ErrorCode.MismatchedDevices) ? (error.mismatched ?? []) : []),
          ...(SecureChatError.isRelay(error, ErrorCode.StaleDevices) ? (error.stale ?? []) : []),
        ].map((entry) => entry.username);
        if (named.length === 0) return false;
        for (const username of new Set(named)) await this.sessions.withPeer(username, () => this.correctDevices(username, error));
        return true;
      },
      senderCertificate: async () => {
        const identity = await this.stores.identity.getLocalIdentity();
        if (!this.certificates || !this.ownAccountId || !identity) {
          throw new SecureChatError(SecureChatErrorCode.InvalidState, 'no sender certificate can be had (no trustRoot, account id or identity)');
        }
        return this.certificates.get({ accountId: this.ownAccountId, deviceId: this.localAccount().deviceId, identityKey: identity.identityKeyPair.publicKey });
      },
      accessKeyOf: async (username) => {
        const own = username === this.localAccount().username;
        const profileKey = own ? await this.stores.metadata.getOwnProfileKey() : await this.stores.metadata.getPeerProfileKey(username);
        return profileKey ? accessKeyOf(profileKey) : null;
      },
      sendMultiRecipient: async (payload, accessKey, id) => {
        const request = { id, payload: base64(payload) };
        const answer = accessKey
          ? await this.transport.sendMultiRecipient({ accessKey: base64(accessKey) }, request)
          : await this.authorized((accessToken) => this.transport.sendMultiRecipient({ accessToken }, request));
        return answer.serverTimestamp;
      },
      report: (error) => this.report(error),
      emitGroupUpdated: (update: GroupUpdated) => {
        try {
          this.emit(ChatEvent.GroupUpdated, update);
        } catch (cause) {
          this.emit(ChatEvent.Error, new SecureChatError(SecureChatErrorCode.ListenerFailed, 'a groupUpdated listener threw', { cause }));
        }
      },
    };
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

  // --- sealed sender (docs/architecture.md, "Sealed sender") ----------------

  /**
   * Makes sure the account's profile key is in the stores (`create`: makes
   * one when there is none) and tells the relay the access key derived from
   * it and `sealedSenderFromAnyone` (idempotent). Without a profile key
   * nothing is uploaded, and peers can reach this account only
   * authenticated (or sealed, if it takes sealed mail from anyone).
   */
  /** `publishAccessKey`, a failure reported as an `error` event: the account works without it (peers send authenticated). */
  private async publishAccessKeyReporting(create: boolean): Promise<void> {
    await this.publishAccessKey(create).catch((error: unknown) => this.report(error));
  }

  private async publishAccessKey(create: boolean): Promise<void> {
    const own = this.localAccount().username;
    if (this.ownAccountId) await this.accountIds.remember(this.stores.metadata, own, this.ownAccountId);
    let profileKey = await this.stores.metadata.getOwnProfileKey();
    if (!profileKey && create) {
      profileKey = generateProfileKey();
      await this.stores.metadata.saveOwnProfileKey(profileKey);
    }
    if (!profileKey) return;
    const accessKey = base64(accessKeyOf(profileKey));
    await this.authorized((token) => this.transport.putUnidentifiedAccess(token, { accessKey, unrestricted: this.sealedSenderFromAnyone }));
  }

  /**
   * What a sealed send to `to` needs: its access key (from the profile key
   * it shared, or this account's own for sync copies) and this device's
   * sender certificate. Null when it goes authenticated: no trust root, no
   * profile key, or no usable certificate (reported in the log).
   * @throws {SecureChatError} a transient failure fetching the certificate (`Network`, 5xx...), as a send would.
   */
  private async sealedAccess(to: string): Promise<{ accessKey: string; certificate: SenderCertificate } | null> {
    if (!this.certificates || !this.ownAccountId) return null;
    const own = this.localAccount();
    // To this account's own devices: authenticated (see fanOutSealed).
    if (to === own.username) return null;
    const profileKey = await this.stores.metadata.getPeerProfileKey(to);
    const identity = await this.stores.identity.getLocalIdentity();
    if (!profileKey || !identity) return null;
    try {
      const certificate = await this.certificates.get({
        accountId: this.ownAccountId,
        deviceId: own.deviceId,
        identityKey: identity.identityKeyPair.publicKey,
      });
      return { accessKey: base64(accessKeyOf(profileKey)), certificate };
    } catch (error) {
      if (SecureChatError.is(error) && outboxFailureKind(error) !== 'permanent') throw error;
      this.logger.warn?.(`no usable sender certificate (${SecureChatError.is(error) ? error.code : 'error'}); sending authenticated`);
      return null;
    }
  }

  /**
   * After a group update this install applied: its profile key to every
   * member it has not given it yet, so that their group messages reach
   * this account sealed. In the background: the receive path holds the
   * author's serial queue, which a send to the author would wait for.
   */
  private shareProfileKeyWithGroup(update: MessageContent): void {
    const self = this.localAccount().username;
    const { members } = parseGroupUpdateBody(update.body);
    if (!members.some((member) => member.username === self)) return;
    const share = async () => {
      for (const { username } of members) {
        if (username !== self) await this.sessions.withPeer(username, () => this.shareProfileKey(username));
      }
    };
    share().catch((error: unknown) => this.report(error));
  }

  /** Sends this account's profile key (kind 7) to `to` once, before the first message to it (never to itself, never without a trust root). */
  private async shareProfileKey(to: string): Promise<void> {
    if (!this.trustRoot || to === this.localAccount().username) return;
    if (await this.stores.metadata.hasSharedProfileKey(to)) return;
    const profileKey = await this.stores.metadata.getOwnProfileKey();
    if (!profileKey) return;
    await this.fanOut(to, encodeProfileKey(this.nextContentTimestamp(), profileKey), {});
    await this.stores.metadata.saveSharedProfileKey(to, true);
  }

  /** One sealed ciphertext per device, each with the registration id its session has. */
  private async sealedFor(
    username: string,
    devices: DeviceId[],
    plaintext: Uint8Array<ArrayBuffer>,
    certificate: SenderCertificate,
    stores: SecureChatStores,
  ): Promise<SealedSendRequest['messages']> {
    const perDevice: SealedSendRequest['messages'] = [];
    for (const deviceId of devices) {
      const ciphertext = await sealFor(username, deviceId, this.localAddress(), plaintext, certificate, stores);
      const session = await stores.session.getSession(ProtocolAddress.new(username, deviceId));
      if (!session) throw new SecureChatError(SecureChatErrorCode.EncryptionFailed, `no session with ${username} device ${deviceId}`);
      perDevice.push({ deviceId, registrationId: session.remoteRegistrationId(), ciphertext: base64(ciphertext) });
    }
    return perDevice;
  }

  /**
   * A fan-out's sealed form: `POST /v1/messages/sealed` to `to` with its
   * access key and no token, then the sync copies in a second sealed request
   * to this account (own access key; authenticated when this account has no
   * profile key or the relay refuses it). Both requests carry ids (`id`, and
   * one derived from it for the sync copies), so a retry stores nothing twice.
   * With no other own device known, this account's bundle is checked at most
   * hourly, so a newly linked device gets sync copies.
   * @throws {SecureChatError} the relay's refusal (`SEALED_SENDER_REFUSED` of `to`, 409/410), `Network`, ...
   */
  private async fanOutSealed(
    to: string,
    devices: DeviceId[],
    plaintext: Uint8Array<ArrayBuffer>,
    options: FanOutOptions & { id: string },
    access: { accessKey: string; certificate: SenderCertificate },
  ): Promise<FanOutResult> {
    const own = this.localAccount().username;
    let syncDevices = options.syncContent ? await this.addressedDevices(own) : [];
    if (options.syncContent && syncDevices.length === 0 && this.now() - this.ownDevicesCheckedAt > OWN_DEVICES_CHECK_INTERVAL_MS) {
      this.ownDevicesCheckedAt = this.now();
      await this.refreshDevices(own);
      syncDevices = await this.addressedDevices(own);
    }
    const syncContent = syncDevices.length > 0 ? options.syncContent : undefined;
    const syncId = derivedRequestId('sync', options.id);
    const { request, sync } = await this.transaction(async (stores) => {
      const request: SealedSendRequest = { to, id: options.id, messages: await this.sealedFor(to, devices, plaintext, access.certificate, stores) };
      // Copies for this account's other devices go authenticated, as Signal's sync messages do: the relay
      // cannot exempt the sending device from a sealed send to its own account, since it does not know it.
      const sync: SendMessageRequest | undefined = syncContent
        ? { to: own, id: syncId, messages: await this.encryptFor(own, syncDevices, syncContent, stores) }
        : undefined;
      return { request, sync };
    });
    const { serverTimestamp } = await this.transport.sendSealed(access.accessKey, request);
    if (sync) await this.post(sync);
    return { serverTimestamp, devices, syncDevices: syncContent ? syncDevices : [] };
  }

  /**
   * A sealed envelope, opened: the outer layer unsealed, its certificate
   * validated against the trust root at `now`, and the account id it names
   * mapped to a username. Returns the inner message as an ordinary envelope
   * from that username and device (for the normal session path) with the
   * certificate's key, which `open` checks against the session's identity
   * key; or what became of it when it goes no further (dropped, handled).
   * Leaves it unacked only for a transient failure (the account lookup).
   */
  private async openSealed(envelope: Envelope): Promise<{ envelope: Envelope; sealed: SealedOrigin } | { done: ReceivedEnvelope } | null> {
    const incoming = { messageId: envelope.id, sender: '', senderDevice: 0 };
    let unsealed: UnsealedMessage;
    try {
      unsealed = await unseal(new Uint8Array(Buffer.from(envelope.ciphertext, 'base64')), this.stores.identity, this.trustRoot, this.now());
    } catch (cause) {
      if (!SecureChatError.is(cause, SecureChatErrorCode.InvalidSenderCertificate) && !SecureChatError.is(cause, SecureChatErrorCode.DecryptionFailed)) throw cause;
      return { done: { dropped: new SecureChatError(cause.code, `sealed message ${envelope.id}: ${cause.message}; dropped`, { cause, incoming }) } };
    }
    let sender: string;
    try {
      sender = await this.accountIds.usernameOf(this.stores.metadata, unsealed.senderAccountId);
    } catch (cause) {
      if (!SecureChatError.isRelay(cause, ErrorCode.UnknownRecipient)) throw cause;
      const error = new SecureChatError(SecureChatErrorCode.InvalidSenderCertificate, `sealed message ${envelope.id} names an account the relay does not know; dropped`, {
        cause,
        incoming,
      });
      return { done: { dropped: error } };
    }
    if (unsealed.msgType === CiphertextMessageType.SenderKey) return { done: await this.receiveGroupMessage(envelope, unsealed, sender) };
    if (unsealed.msgType !== CiphertextMessageType.PreKey && unsealed.msgType !== CiphertextMessageType.Whisper) {
      const error = new SecureChatError(SecureChatErrorCode.MalformedContent, `sealed message ${envelope.id} carries message type ${unsealed.msgType}; dropped`, {
        incoming: { ...incoming, sender, senderDevice: unsealed.senderDevice },
      });
      return { done: { dropped: error } };
    }
    const inner: Envelope = {
      id: envelope.id,
      source: sender,
      sourceDevice: unsealed.senderDevice,
      type: unsealed.msgType === CiphertextMessageType.PreKey ? EnvelopeType.PreKey : EnvelopeType.Signal,
      ciphertext: base64(unsealed.contents),
      serverTimestamp: envelope.serverTimestamp,
    };
    return { envelope: inner, sealed: { certificateKey: unsealed.certificateKey } };
  }

  /**
   * A sealed message whose inner message is a sender-key message from
   * `sender` (certificate validated): a group message. In the sender's
   * serial queue and one store transaction: recalled from the pending
   * messages when decrypted before, acked silently when processed before,
   * else checked (the certificate's key is the sender's identity key; the
   * group is known and has both as members), decrypted with the sender's
   * key for the group, and kept as pending with its envelope id processed.
   * Undecryptable (no such sender key: e.g. this account was removed and
   * the sender rotated) or malformed: dropped, and the id processed.
   */
  private async receiveGroupMessage(envelope: Envelope, unsealed: UnsealedMessage, sender: string): Promise<ReceivedEnvelope> {
    const from: IncomingMessageContext = { messageId: envelope.id, sender, senderDevice: unsealed.senderDevice };
    const own = this.localAccount();
    if (sender === own.username && unsealed.senderDevice === own.deviceId) {
      return { dropped: new SecureChatError(SecureChatErrorCode.MalformedContent, `sealed message ${envelope.id} claims to come from this device; dropped`, { incoming: from }) };
    }
    return this.sessions.withPeer(sender, async () => {
      try {
        return await this.transaction(async (stores): Promise<ReceivedEnvelope> => {
          const identityRecord = await stores.identity.getPeerIdentity(sender);
          const identity = identityRecord ? identityStatusOf(identityRecord) : IdentityStatus.Trusted;
          const pending = await stores.metadata.getPendingMessage(envelope.id);
          if (pending && pending.sender === sender && pending.senderDevice === unsealed.senderDevice) {
            const recalled = await this.groupService.recallGroupMessage(pending.content, stores);
            return { message: recalled.content, identity, group: { ...recalled.group, from } };
          }
          if (await stores.metadata.hasProcessedEnvelope(envelope.id)) return { handled: true };
          const senderKey =
            sender === own.username ? (await stores.identity.getLocalIdentity())?.identityKeyPair.publicKey : identityRecord?.identityKey;
          if (!senderKey?.equals(unsealed.certificateKey)) {
            throw new SecureChatError(SecureChatErrorCode.InvalidSenderCertificate, `the sender certificate names another key than ${sender}'s identity key`);
          }
          const { plaintext, opened } = await this.groupService.openGroupMessage(sender, unsealed.senderDevice, unsealed.contents, unsealed.groupId, stores);
          await stores.metadata.saveProcessedEnvelope(envelope.id, this.now());
          await stores.metadata.savePendingMessage(envelope.id, { sender, senderDevice: unsealed.senderDevice, content: plaintext });
          // The group's sequence of the sender device (a repeat never gets here: libsignal refuses it as a duplicate).
          const sequence = await this.followSequence(stores, sender, unsealed.senderDevice, opened.content, groupSequenceKey(opened.group.id));
          return { message: opened.content, identity, ...(sequence ? { sequence } : {}), group: { ...opened.group, from } };
        });
      } catch (cause) {
        if (cause instanceof DuplicateGroupMessage) {
          // A copy of a group message decrypted before (a relay replaying it under a new id): acked, never shown.
          this.logger.debug?.(`dropped a duplicate group message ${envelope.id}`);
          await this.stores.metadata.saveProcessedEnvelope(envelope.id, this.now());
          return { handled: true };
        }
        const dropCodes = [SecureChatErrorCode.DecryptionFailed, SecureChatErrorCode.MalformedContent, SecureChatErrorCode.InvalidSenderCertificate];
        if (!SecureChatError.is(cause) || !dropCodes.includes(cause.code)) throw cause;
        await this.stores.metadata.saveProcessedEnvelope(envelope.id, this.now());
        return { dropped: new SecureChatError(cause.code, `group message ${envelope.id}: ${cause.message}; dropped`, { cause, incoming: from }) };
      }
    });
  }

  // --- tokens ---------------------------------------------------------------

  private acceptAuth(response: AuthResponse): void {
    this.account = { username: response.username, deviceId: asDeviceId(response.deviceId) };
    const accountId = normalizeAccountId(response.accountId);
    if (accountId !== this.ownAccountId) this.certificates?.clear();
    this.ownAccountId = accountId;
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
    if (this.deviceUnlinked) throw new SecureChatError(SecureChatErrorCode.InvalidState, 'this device was unlinked; this client is closed');
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
      if (SecureChatError.isRelay(error, ErrorCode.DeviceUnlinked)) throw this.stopForUnlinkedDevice(error);
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
    // A loop waiting for the connection retries now; an outbox left from an earlier run starts.
    this.wakeOutbox();
    this.kickOutbox();
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
    if (code === CloseCode.DeviceUnlinked) {
      this.stopForUnlinkedDevice();
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
          { relayCode: frame.code, details: frame.details, ...deviceListsOf(frame) },
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

  // The outbox (docs/architecture.md, "The outbox"). One loop sends the
  // oldest queued message until the outbox is empty or a failure stops it.

  /** Starts the sender loop, or has it run again once the running pass stops. */
  private kickOutbox(): void {
    if (this.outboxRun) {
      this.outboxKicked = true;
      return;
    }
    this.outboxKicked = false;
    this.outboxRun = this.runOutbox()
      .catch((error: unknown) => this.report(error))
      .finally(() => {
        this.outboxRun = undefined;
        if (this.outboxKicked && this.auth) this.kickOutbox();
      });
  }

  private async runOutbox(): Promise<void> {
    for (;;) {
      if (!this.auth || this.accountDeleted) {
        this.rejectOutboxWaiters(new SecureChatError(SecureChatErrorCode.InvalidState, 'signed out; the message stays in the outbox'));
        return;
      }
      let next: OutgoingMessageRecord | undefined;
      try {
        [next] = await this.stores.metadata.getOutgoing();
      } catch (cause) {
        this.rejectOutboxWaiters(storeFailure(cause, 'the outbox could not be read'));
        return;
      }
      if (!next) return;
      const outcome = await this.sendOutgoing(next);
      if (outcome === 'stop') return;
      if (outcome === 'retry') {
        await this.waitToRetryOutbox();
        if (!this.wantConnected) {
          this.rejectOutboxWaiters(
            new SecureChatError(SecureChatErrorCode.ConnectionLost, 'the client closed before the relay accepted the message; it stays in the outbox'),
          );
          return;
        }
      }
    }
  }

  /**
   * One attempt at the oldest outbox message. `next`: it left the outbox
   * (sent, or refused for good); `retry`: a transient failure while
   * connected, try again; `stop`: it stays queued and the loop stops.
   */
  private async sendOutgoing(message: OutgoingMessageRecord): Promise<'next' | 'retry' | 'stop'> {
    let result: FanOutResult;
    let syncContent: Uint8Array<ArrayBuffer> | undefined;
    const content = new Uint8Array(message.content);
    try {
      const own = this.localAccount().username;
      if (message.recipient !== own) {
        try {
          syncContent = encodeSyncCopy(message.recipient, decodeContent(content));
        } catch (cause) {
          throw new SecureChatError(SecureChatErrorCode.EncryptionFailed, 'the queued content is not a message this version sends', { cause });
        }
      }
      result = await this.withSendLocks(message.recipient, syncContent !== undefined, async () => {
        // Kind 7 goes with the first message to a peer, so that it can answer sealed.
        await this.shareProfileKey(message.recipient);
        return this.fanOut(message.recipient, content, { id: message.id, syncContent });
      });
    } catch (cause) {
      const error = SecureChatError.is(cause) ? cause : new SecureChatError(SecureChatErrorCode.EncryptionFailed, 'the send failed', { cause });
      const kind = outboxFailureKind(error);
      if (kind === 'transient' && this.wantConnected) {
        this.logger.debug?.(`send ${message.id} failed (${error.code}); kept in the outbox for a retry`);
        return 'retry';
      }
      if (kind !== 'permanent') {
        this.rejectOutboxWaiters(error);
        return 'stop';
      }
      try {
        await this.stores.metadata.removeOutgoing(message.id);
      } catch (removal) {
        this.rejectOutboxWaiters(storeFailure(removal, 'a refused message could not be removed from the outbox'));
        return 'stop';
      }
      this.settleOutgoing(message, { error });
      return 'next';
    }
    this.outboxBackOff.reset();
    const sent: SentMessage = { id: message.id, timestamp: message.timestamp, ...result };
    const own = this.localAccount().username;
    const syncDevices = syncContent ? result.syncDevices : [];
    // Usually one transaction keeps the message for a resend and takes it out of the outbox; if
    // that fails, each step on its own, so that each failure is handled as it always was.
    const done = await this.transaction(async (stores) => {
      await logSent(stores, message.recipient, result.devices, message.timestamp, result.serverTimestamp, content);
      if (syncContent) await logSent(stores, own, syncDevices, message.timestamp, result.serverTimestamp, syncContent);
      await stores.metadata.removeOutgoing(message.id);
    }).then(
      () => true,
      () => false,
    );
    if (done) {
      await this.pruneMessageLogsIfDue();
      this.settleOutgoing(message, { sent });
      return 'next';
    }
    await this.keepForResend(message.recipient, result.devices, message.timestamp, result.serverTimestamp, content);
    if (syncContent && syncDevices.length > 0) {
      await this.keepForResend(own, syncDevices, message.timestamp, result.serverTimestamp, syncContent);
    }
    try {
      await this.stores.metadata.removeOutgoing(message.id);
    } catch (cause) {
      // Sent: the caller learns so. A later attempt repeats the id, which the relay stores only once.
      this.settleOutgoing(message, { sent });
      this.rejectOutboxWaiters(storeFailure(cause, 'a sent message could not be removed from the outbox'));
      return 'stop';
    }
    this.settleOutgoing(message, { sent });
    return 'next';
  }

  /** Resolves or rejects the `send()` call waiting for `message`, or, when none waits, emits `sent` or `sendFailed`. */
  private settleOutgoing(message: OutgoingMessageRecord, outcome: { sent: SentMessage } | { error: SecureChatError }): void {
    const waiter = this.outboxWaiters.get(message.id);
    this.outboxWaiters.delete(message.id);
    try {
      if ('sent' in outcome) {
        if (waiter) waiter.resolve(outcome.sent);
        else {
          const { id, timestamp, serverTimestamp } = outcome.sent;
          this.emit(ChatEvent.Sent, { id, recipient: message.recipient, timestamp, serverTimestamp });
        }
      } else if (waiter) {
        waiter.reject(outcome.error);
      } else {
        this.emit(ChatEvent.SendFailed, { id: message.id, recipient: message.recipient, timestamp: message.timestamp, error: outcome.error });
      }
    } catch (cause) {
      this.emit(ChatEvent.Error, new SecureChatError(SecureChatErrorCode.ListenerFailed, 'a sent or sendFailed listener threw', { cause }));
    }
  }

  /** Every `send()` of this run still waiting rejects with `error`; their messages stay queued. */
  private rejectOutboxWaiters(error: SecureChatError): void {
    for (const [id, waiter] of this.outboxWaiters) {
      this.outboxWaiters.delete(id);
      waiter.reject(error);
    }
  }

  /**
   * After a transient failure while connected: until the socket is open
   * again (the reconnect has its own back-off with jitter), or, when it is
   * open (a timeout, a 5xx), a back-off delay; `close` ends it too.
   */
  private waitToRetryOutbox(): Promise<void> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = () => {
        clearTimeout(timer);
        if (this.outboxWake === done) this.outboxWake = undefined;
        resolve();
      };
      this.outboxWake = done;
      if (this.socket?.isOpen) timer = setTimeout(done, this.outboxBackOff.next());
    });
  }

  private wakeOutbox(): void {
    this.outboxWake?.();
  }

  // Fan-out (docs/architecture.md, "Fan-out and device correction").

  /**
   * Runs `task` in the recipient's serial queue and, with `sync`, then in
   * this account's own: the order is always recipient first, own account
   * last, and nothing takes another peer's queue while holding the own one,
   * so two fan-outs cannot wait on each other.
   */
  private withSendLocks<T>(to: string, sync: boolean, task: () => Promise<T>): Promise<T> {
    const own = this.localAccount().username;
    if (!sync || to === own) return this.sessions.withPeer(to, task);
    return this.sessions.withPeer(to, () => this.sessions.withPeer(own, task));
  }

  /**
   * For the receive side (receipts, typing): `plaintext` to every device of
   * `to` and, with `sync`, the same content to this account's other devices;
   * `ephemeral` is passed to the relay. Corrects 409/410 like `send`, but
   * does not go through the outbox. Takes the serial queues itself: call it
   * outside `withPeer`.
   * @throws {SecureChatError} as `fanOut`.
   */
  private transmitContent(
    to: string,
    plaintext: Uint8Array<ArrayBuffer>,
    options: { ephemeral?: boolean; sync?: boolean } = {},
  ): Promise<FanOutResult> {
    const sync = options.sync === true && to !== this.localAccount().username;
    return this.withSendLocks(to, sync, () =>
      this.fanOut(to, plaintext, { syncContent: sync ? plaintext : undefined, ephemeral: options.ephemeral }),
    );
  }

  /**
   * Encrypts `plaintext` for every device of `to` that this install has a
   * session with (opening sessions from the bundle when it has none) and
   * `syncContent` for every other device of this account, and hands both to
   * the relay as one send. On 409 (`mismatched`) sessions are opened for the
   * missing devices and dropped for the extra ones; on 410 (`stale`) the
   * stale devices' sessions are dropped and opened again from a fresh
   * bundle; then it is sent again, at most `MAX_DEVICE_CORRECTIONS` times.
   * Each attempt encrypts afresh. Run under `withSendLocks`.
   * @throws {SecureChatError} `InvalidArgument` (sending to this account, which has no other device),
   *   `IdentityChanged`, `InvalidPreKeyBundle`, `EncryptionFailed`, the relay's refusal, `Network`, ...
   */
  private async fanOut(to: string, plaintext: Uint8Array<ArrayBuffer>, options: FanOutOptions): Promise<FanOutResult> {
    const own = this.localAccount().username;
    await this.trust.assertSendable(this.stores, to);
    // Sealed requests always carry an id, so a retry after a partial failure stores nothing twice.
    const sealedId = options.id ?? randomUUID();
    for (let round = 0; ; round++) {
      let devices = await this.addressedDevices(to);
      if (devices.length === 0) devices = await this.openSessions(to);
      if (devices.length === 0) {
        throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'this account has no other device to send to');
      }
      // Sealed when possible (docs/architecture.md, "Sealed sender"); typing (ephemeral) always goes authenticated.
      const access = options.ephemeral ? null : await this.sealedAccess(to);
      if (access) {
        try {
          return await this.fanOutSealed(to, devices, plaintext, { ...options, id: sealedId }, access);
        } catch (error) {
          if (!SecureChatError.isRelay(error, ErrorCode.SealedSenderRefused)) {
            if (round >= MAX_DEVICE_CORRECTIONS || !(await this.correctDevices(to, error))) throw error;
            this.logger.debug?.(`the relay corrected the devices of a sealed send (${(error as SecureChatError).relayCode}); sending again`);
            continue;
          }
          // The peer's access key changed (a new profile key) or it no longer shares it: forget it and send authenticated.
          if (to !== own) await this.stores.metadata.savePeerProfileKey(to, null);
          this.logger.debug?.(`the relay refused a sealed send to ${to}; sending authenticated`);
        }
      }
      const syncDevices = options.syncContent ? await this.addressedDevices(own) : [];
      const request = await this.transaction(async (stores): Promise<SendMessageRequest> => {
        const request: SendMessageRequest = { to, messages: await this.encryptFor(to, devices, plaintext, stores) };
        if (options.id) request.id = options.id;
        if (options.syncContent) request.sync = await this.encryptFor(own, syncDevices, options.syncContent, stores);
        if (options.ephemeral) request.ephemeral = true;
        return request;
      });
      try {
        return { serverTimestamp: await this.post(request), devices, syncDevices };
      } catch (error) {
        if (round >= MAX_DEVICE_CORRECTIONS || !(await this.correctDevices(to, error))) throw error;
        this.logger.debug?.(`the relay corrected the devices of a send (${(error as SecureChatError).relayCode}); sending again`);
      }
    }
  }

  /**
   * One ciphertext per device, each with the registration id its session
   * has (the relay answers 410 when it is not the device's current one).
   * One transaction: the ratchets step forward together or not at all.
   */
  private async encryptFor(username: string, devices: DeviceId[], plaintext: Uint8Array<ArrayBuffer>, stores: SecureChatStores) {
    const perDevice: SendMessageRequest['messages'] = [];
    for (const deviceId of devices) {
      const { type, ciphertext, registrationId } = await this.sessions.encrypt(username, deviceId, plaintext, stores);
      perDevice.push({ deviceId, registrationId, type, ciphertext: base64(ciphertext) });
    }
    return perDevice;
  }

  /**
   * Applies the relay's 409 or 410 to the sessions and device lists of the
   * accounts it names (only `to` and this account are taken). False when
   * `error` is neither, so there is nothing to correct.
   */
  private async correctDevices(to: string, error: unknown): Promise<boolean> {
    const own = this.localAccount().username;
    const concerned = (username: string) => username === to || username === own;
    if (SecureChatError.isRelay(error, ErrorCode.MismatchedDevices)) {
      const mismatched = (error.mismatched ?? []).filter((entry) => concerned(entry.username));
      if (mismatched.length === 0) {
        // No lists (an older relay): take the recipient's devices from its bundle.
        await this.refreshDevices(to);
        return true;
      }
      for (const { username, missing, extra } of mismatched) {
        await this.forgetDevices(username, extra.map(asDeviceId));
        if (missing.length > 0) await this.refreshDevices(username);
      }
      return true;
    }
    if (SecureChatError.isRelay(error, ErrorCode.StaleDevices)) {
      const stale = (error.stale ?? []).filter((entry) => concerned(entry.username));
      if (stale.length === 0) return false;
      for (const { username, devices } of stale) {
        await this.forgetDevices(username, devices.map(asDeviceId));
        await this.refreshDevices(username);
      }
      return true;
    }
    return false;
  }

  /** Deletes the sessions with these devices of `username` and drops them from its device list. */
  private async forgetDevices(username: string, deviceIds: DeviceId[]): Promise<void> {
    if (deviceIds.length === 0) return;
    await this.transaction(async (stores) => {
      for (const deviceId of deviceIds) await stores.session.removeSession(ProtocolAddress.new(username, deviceId));
      const known = await stores.metadata.getPeerDevices(username);
      await stores.metadata.savePeerDevices(username, known.filter((deviceId) => !deviceIds.includes(deviceId)));
    });
  }

  /**
   * Takes `username`'s devices from a fresh bundle: opens sessions with the
   * ones that have none, deletes the sessions of known devices the bundle no
   * longer names. An own account with no other keyed device has no bundle
   * (`UNKNOWN_RECIPIENT`): then it has no other devices.
   */
  private async refreshDevices(username: string): Promise<void> {
    const known = await this.stores.metadata.getPeerDevices(username);
    let current: DeviceId[];
    try {
      current = await this.openSessions(username);
    } catch (error) {
      if (!(username === this.localAccount().username && SecureChatError.isRelay(error, ErrorCode.UnknownRecipient))) throw error;
      current = [];
      await this.stores.metadata.savePeerDevices(username, []);
    }
    await this.forgetDevices(username, known.filter((deviceId) => !current.includes(deviceId)));
  }

  /** The devices of `username` this install has a session with; never this install's own device. */
  private async addressedDevices(username: string): Promise<DeviceId[]> {
    const self = this.localAccount();
    const known = await this.stores.metadata.getPeerDevices(username);
    const withSession: DeviceId[] = [];
    for (const deviceId of known) {
      if (username === self.username && deviceId === self.deviceId) continue;
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
    await this.accountIds.remember(this.stores.metadata, username, bundle.accountId);
    let identityKey: PublicKey;
    try {
      identityKey = PublicKey.deserialize(new Uint8Array(Buffer.from(bundle.identityKey, 'base64')));
    } catch (cause) {
      throw new SecureChatError(SecureChatErrorCode.InvalidPreKeyBundle, `the identity key in the bundle of ${username} is invalid`, { cause });
    }
    if (username === this.localAccount().username) {
      // Every device of this account shares its identity key: another one is a relay's forgery.
      const local = await this.stores.identity.getLocalIdentity();
      if (!local?.identityKeyPair.publicKey.equals(identityKey)) {
        throw new SecureChatError(SecureChatErrorCode.InvalidPreKeyBundle, "the bundle of this account's devices names another identity key");
      }
      return bundle;
    }
    const { change, sendable } = await this.transaction((stores) => this.trust.recordBundleKey(stores, username, identityKey));
    if (change) this.emitIdentityChanged(change);
    if (!sendable) throw identityChangedError(username);
    return bundle;
  }

  /** Opens sessions with every device in `username`'s bundle that has none, and records them as its devices. */
  private async openSessions(username: string): Promise<DeviceId[]> {
    const self = this.localAccount();
    const bundle = await this.fetchBundle(username);
    // The relay leaves the asking device out of its own account's bundle; never address it anyway.
    const addressable = username === self.username ? { ...bundle, devices: bundle.devices.filter((d) => d.deviceId !== self.deviceId) } : bundle;
    return this.transaction(async (stores) => {
      const devices = await this.sessions.processBundle(addressable, stores);
      await stores.metadata.savePeerDevices(username, devices);
      return devices;
    });
  }

  /**
   * `plaintext` to these devices of `to` only, as a partial send (session
   * repair's resends: the relay does not require `to`'s other devices), no
   * correction, no sync. Run in `to`'s serial queue.
   */
  private async transmit(to: string, devices: DeviceId[], plaintext: Uint8Array<ArrayBuffer>): Promise<number> {
    const messages = await this.transaction((stores) => this.encryptFor(to, devices, plaintext, stores));
    return this.post({ to, partial: true, messages });
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
      await this.transaction((stores) => logSent(stores, recipient, devices, timestamp, serverTimestamp, content));
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
   * Tells `username` that the user read its messages with these
   * `timestamps` (`IncomingMessage.timestamp`): a read receipt to each of its
   * devices, stored by the relay until they fetch it (more than
   * `MAX_RECEIPT_TIMESTAMPS` timestamps go in several receipts).
   * @throws {SecureChatError} `InvalidArgument` (a bad username, no timestamps, or one that is not an
   *   integer >= 0), `InvalidState`, and what a send throws (`RelayRejected`, `IdentityChanged`, `Network`, ...).
   */
  async sendReadReceipt(username: string, timestamps: number[]): Promise<void> {
    this.requireAuth();
    const to = checkUsername(username);
    if (!Array.isArray(timestamps) || timestamps.length === 0 || !timestamps.every((t) => Number.isSafeInteger(t) && t >= 0)) {
      throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'timestamps must be a non-empty array of integers >= 0');
    }
    await this.sendReceipt(to, ReceiptType.Read, [...timestamps]);
  }

  /**
   * Tells `username`'s devices that the user started (`true`) or stopped
   * typing. Ephemeral: the relay hands it only to devices connected at that
   * moment and stores nothing, so it is sent only while this client is
   * connected, and a device offline then never sees it.
   * @throws {SecureChatError} `InvalidArgument`, `InvalidState` (not signed in, or not connected), and
   *   what a send throws.
   */
  async sendTyping(username: string, typing: boolean): Promise<void> {
    this.requireAuth();
    const to = checkUsername(username);
    if (typeof typing !== 'boolean') throw new SecureChatError(SecureChatErrorCode.InvalidArgument, 'typing must be a boolean');
    if (!this.socket?.isOpen) throw new SecureChatError(SecureChatErrorCode.InvalidState, 'typing is sent only while connected');
    await this.transmitContent(to, encodeTyping(this.nextContentTimestamp(), typing), { ephemeral: true });
  }

  /** Receipts of one type for `to`'s messages, at most `MAX_RECEIPT_TIMESTAMPS` timestamps per receipt. */
  private async sendReceipt(to: string, type: ReceiptType, timestamps: number[]): Promise<void> {
    for (let i = 0; i < timestamps.length; i += MAX_RECEIPT_TIMESTAMPS) {
      const plaintext = encodeReceipt(this.nextContentTimestamp(), { type, timestamps: timestamps.slice(i, i + MAX_RECEIPT_TIMESTAMPS) });
      await this.transmitContent(to, plaintext);
    }
  }

  /** Notes a message handed to the app for a delivery receipt; a full batch goes at once. */
  private queueDeliveryReceipt(message: IncomingMessage): void {
    if (!this.deliveryReceipts || message.outgoing || message.sender === this.account?.username) return;
    const batch = this.deliveryReceiptBatches.get(message.sender) ?? [];
    batch.push(message.timestamp);
    this.deliveryReceiptBatches.set(message.sender, batch);
    if (batch.length >= MAX_RECEIPT_TIMESTAMPS) this.flushDeliveryReceipts(message.sender);
  }

  /** Sends the batched delivery receipts (of `only` that sender), in the background. */
  private flushDeliveryReceipts(only?: string): void {
    for (const [sender, timestamps] of this.deliveryReceiptBatches) {
      if (only !== undefined && sender !== only) continue;
      this.deliveryReceiptBatches.delete(sender);
      void this.sendDeliveryReceipts(sender, timestamps);
    }
  }

  /**
   * Delivery receipts for `timestamps`. What a transient failure (the
   * connection dropped, a timeout) kept from going out is batched again and
   * goes with the next flush, once the next frame received was handled.
   */
  private async sendDeliveryReceipts(sender: string, timestamps: number[]): Promise<void> {
    for (let i = 0; i < timestamps.length; i += MAX_RECEIPT_TIMESTAMPS) {
      const chunk = timestamps.slice(i, i + MAX_RECEIPT_TIMESTAMPS);
      try {
        await this.transmitContent(sender, encodeReceipt(this.nextContentTimestamp(), { type: ReceiptType.Delivery, timestamps: chunk }));
      } catch (error) {
        if (SecureChatError.is(error) && outboxFailureKind(error) === 'transient') {
          this.deliveryReceiptBatches.set(sender, [...timestamps.slice(i), ...(this.deliveryReceiptBatches.get(sender) ?? [])]);
          this.logger.debug?.(`delivery receipts to ${sender} not sent (${error.code}); kept for the next flush`);
        } else if (SecureChatError.is(error, SecureChatErrorCode.IdentityChanged)) {
          // Under identityPolicy 'block' nothing goes to a changed key; the app was told with identityChanged.
          this.logger.debug?.(`no delivery receipt to ${sender}: its identity key changed`);
        } else {
          this.report(error);
        }
        return;
      }
    }
  }

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
   *
   * Dedupe (docs/architecture.md, "Dedupe and acks"): the envelope id is
   * recorded as processed in the decryption's transaction; a redelivery of
   * a processed id with no pending copy (its ack was lost) is acked
   * silently and never reaches the app.
   *
   * Receipts and typing are emitted as `receipt` and `typing` events, never
   * as messages, and acked once the listeners have returned. An ephemeral
   * envelope (`ephemeral: true`) was never stored: it is not acked, nothing
   * of it is kept but the ratchet step, and only typing may come that way.
   */
  private async receive(envelope: Envelope): Promise<void> {
    let sealed: SealedOrigin | undefined;
    if (envelope?.type === EnvelopeType.Sealed && typeof envelope.id === 'string' && typeof envelope.ciphertext === 'string') {
      if (this.inFlight.has(envelope.id)) return;
      let opened: Awaited<ReturnType<SecureChatClient['openSealed']>>;
      try {
        opened = await this.openSealed(envelope);
      } catch (cause) {
        this.emit(ChatEvent.Error, storeFailure(cause, `sealed message ${envelope.id}: left for a retry`));
        return;
      }
      if (!opened) return;
      if ('done' in opened) {
        if ('dropped' in opened.done) this.emit(ChatEvent.Error, opened.done.dropped);
        if ('dropped' in opened.done || 'handled' in opened.done) {
          await this.ackQuietly(envelope.id);
          return;
        }
        if ('message' in opened.done && opened.done.group) {
          const { message, identity, group, sequence } = opened.done;
          if (sequence?.missing) this.emitMessagesMissing(sequence.track, [sequence.missing]);
          this.inFlight.add(envelope.id);
          await this.deliver(this.incomingMessage(envelope, group.from, message, identity, group, sequence?.filledGap));
        }
        return;
      }
      ({ envelope, sealed } = opened);
    }
    const context = envelopeContext(envelope);
    if (!context) {
      this.emit(ChatEvent.Error, new SecureChatError(SecureChatErrorCode.RelayError, 'the relay sent a malformed envelope'));
      return;
    }
    if (this.inFlight.has(context.messageId)) return;
    const ephemeral = envelope.ephemeral === true;

    if (!sealed && envelope.sourceAccountId !== undefined) {
      await this.accountIds.remember(this.stores.metadata, context.sender, envelope.sourceAccountId).catch((error: unknown) => this.report(error));
    }
    let received: ReceivedEnvelope;
    try {
      received = await this.sessions.withPeer(context.sender, () => this.receiveFromPeer(envelope, context, ephemeral, sealed));
    } catch (cause) {
      if (SecureChatError.is(cause, SecureChatErrorCode.SessionRepairFailed)) {
        this.emit(ChatEvent.Error, cause);
      } else {
        const code = SecureChatError.is(cause, SecureChatErrorCode.StoreTampered) ? cause.code : SecureChatErrorCode.StoreFailure;
        const fate = ephemeral ? 'an ephemeral message, lost' : 'left for a retry';
        this.emit(ChatEvent.Error, new SecureChatError(code, `message ${context.messageId}: ${fate}`, { cause, incoming: context }));
      }
      return;
    }
    const done = () => (ephemeral ? Promise.resolve() : this.ackQuietly(context.messageId));
    if ('dropped' in received) {
      this.emit(ChatEvent.Error, received.dropped);
      await done();
      return;
    }
    if ('handled' in received) {
      await done();
      return;
    }
    if ('receipt' in received) {
      this.emitToApp(ChatEvent.Receipt, received.receipt, context);
      await done();
      return;
    }
    if ('typing' in received) {
      this.emitToApp(ChatEvent.Typing, received.typing, context);
      await done();
      return;
    }
    if (received.sequence?.missing) this.emitMessagesMissing(received.sequence.track, [received.sequence.missing]);
    this.inFlight.add(context.messageId);
    await this.deliver(this.incomingMessage(envelope, context, received.message, received.identity, undefined, received.sequence?.filledGap));
  }

  /**
   * What is missing now, per sender device and conversation, from every
   * sequence this install follows (docs/architecture.md, "Gap detection"):
   * numbers skipped by a message that arrived and not arrived since. A
   * range drops out when its messages arrive; a track keeps at most
   * `MAX_MISSING_RANGES` ranges (the oldest are forgotten first).
   * @throws {SecureChatError} `InvalidState` before `register`/`login`, a store's failure.
   */
  async missingMessages(): Promise<MessagesMissing[]> {
    this.localAccount();
    const tracks = await this.stores.metadata.getSequenceTracks();
    return tracks.filter((track) => track.missing.length > 0).map((track) => this.messagesMissingOf(track, track.missing));
  }

  private messagesMissingOf(track: SequenceSeen['track'], ranges: readonly SequenceRange[]): MessagesMissing {
    const own = this.localAccount().username;
    const group = groupOfSequenceKey(track.recipient);
    const outgoing = track.sender === own && track.recipient !== own;
    return {
      sender: track.sender,
      senderDevice: track.senderDevice,
      conversation: group ?? (outgoing ? track.recipient : track.sender),
      ...(group !== null ? { group } : {}),
      outgoing,
      ranges: ranges.map(({ from, to }) => ({ from, to })),
      count: countMissing(ranges),
    };
  }

  private emitMessagesMissing(track: SequenceSeen['track'], ranges: SequenceRange[]): void {
    const missing = this.messagesMissingOf(track, ranges);
    this.logger.warn?.(`${missing.count} message(s) from ${missing.sender} device ${missing.senderDevice} never arrived`);
    try {
      this.emit(ChatEvent.MessagesMissing, missing);
    } catch (cause) {
      this.emit(ChatEvent.Error, new SecureChatError(SecureChatErrorCode.ListenerFailed, 'a messagesMissing listener threw', { cause }));
    }
  }

  /**
   * A receipt or typing event. A listener that throws is reported; the
   * event is not emitted again (it is acked all the same: unlike a message,
   * the app has nothing to show from a second copy).
   */
  private emitToApp<E extends ChatEvent.Receipt | ChatEvent.Typing>(
    event: E,
    payload: Parameters<ChatEventHandlerMap[E]>[0],
    context: IncomingMessageContext,
  ): void {
    try {
      this.emit(event, ...([payload] as Parameters<ChatEventHandlerMap[E]>));
    } catch (cause) {
      this.emit(ChatEvent.Error, new SecureChatError(SecureChatErrorCode.ListenerFailed, `a ${event} listener threw`, { cause, incoming: context }));
    }
  }

  /** Everything about one envelope that needs the sender's serial queue. */
  private async receiveFromPeer(envelope: Envelope, context: IncomingMessageContext, ephemeral: boolean, sealed?: SealedOrigin): Promise<ReceivedEnvelope> {
    const senderDevice = asDeviceId(context.senderDevice);
    let opened: OpenedMessage;
    try {
      opened = await this.open(envelope, context, ephemeral, sealed);
    } catch (cause) {
      if (cause instanceof SealedSenderKeyMismatch) {
        return { dropped: new SecureChatError(SecureChatErrorCode.InvalidSenderCertificate, `sealed message ${context.messageId}: ${cause.message}; dropped`, { incoming: context }) };
      }
      if (!(cause instanceof DecryptFailure)) throw cause;
      if (ephemeral) {
        // Typing is not worth a session reset: the next stored message from the sender asks for one if needed.
        return {
          dropped: new SecureChatError(SecureChatErrorCode.DecryptionFailed, `ephemeral message ${context.messageId} did not decrypt (${cause.kind}); dropped`, {
            cause,
            incoming: context,
          }),
        };
      }
      return this.onUndecryptable(envelope, context, cause);
    }
    if (opened.identityChange) this.emitIdentityChanged(opened.identityChange);
    if (opened.fresh) this.repair.heardFrom(context.sender, senderDevice);
    if ('alreadyProcessed' in opened) {
      this.logger.debug?.(`message ${context.messageId} was processed before; acked again`);
      return { handled: true };
    }
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
    const { content } = opened;
    if (ephemeral && content.kind !== ContentKind.Typing) {
      return {
        dropped: new SecureChatError(
          SecureChatErrorCode.MalformedContent,
          `ephemeral message ${context.messageId} of kind ${content.kind}: only typing may be ephemeral; dropped`,
          { incoming: context },
        ),
      };
    }
    switch (content.kind) {
      case ContentKind.SessionResetRequest:
        await this.answerResetRequest(context, sessionResetSince(content.body));
        return { handled: true };
      case ContentKind.Receipt: {
        const { type, timestamps } = receiptOf(content);
        const kind = type === ReceiptType.Read ? 'read' : 'delivery';
        return { receipt: { sender: context.sender, senderDevice, type: kind, timestamps } };
      }
      case ContentKind.Typing:
        return { typing: { sender: context.sender, senderDevice, typing: typingOf(content) === TypingAction.Started, timestamp: content.timestamp } };
      case ContentKind.GroupUpdate: {
        const refused = await this.groupService.receiveGroupUpdate(context.sender, content);
        if (refused) this.logger.debug?.(`group update in message ${context.messageId} not applied (${refused})`);
        else this.shareProfileKeyWithGroup(content);
        return { handled: true };
      }
      case ContentKind.SenderKeyDistribution:
        await this.groupService.receiveSenderKey(context.sender, senderDevice, content);
        return { handled: true };
      case ContentKind.GroupMessage:
        return {
          dropped: new SecureChatError(SecureChatErrorCode.MalformedContent, `message ${context.messageId}: a group message outside a sender-key message; dropped`, {
            incoming: context,
          }),
        };
      case ContentKind.ProfileKey:
        // A peer's profile key: from now on this account can send to it sealed. Never shown to the app.
        if (context.sender !== this.localAccount().username) await this.stores.metadata.savePeerProfileKey(context.sender, profileKeyOf(content));
        return { handled: true };
      default:
        return { message: content, identity: opened.identity, ...(opened.sequence ? { sequence: opened.sequence } : {}) };
    }
  }

  /**
   * The envelope's content: recalled from the pending messages when it was
   * decrypted before, else decrypted. One store transaction holds the ratchet
   * step, the one-time prekeys it consumes, the peer's identity and device,
   * the received-message log entry and the pending copy, so a crash leaves
   * all of them or none: never a consumed prekey without its session, nor a
   * ratchet step without the message. An identity change the decryption
   * brought (libsignal saves the key it decrypted under, for any message
   * type) is handled in it too, and so is the envelope id, recorded as
   * processed whatever the content turns out to be. An ephemeral envelope
   * keeps only the ratchet step (and identity): no pending copy, no id.
   * A sync copy from another account is malformed: only this account's own
   * devices may say what it sent.
   * @throws {DecryptFailure} when libsignal refuses the message.
   */
  private open(envelope: Envelope, context: IncomingMessageContext, ephemeral: boolean, sealed?: SealedOrigin): Promise<OpenedMessage> {
    const senderDevice = asDeviceId(context.senderDevice);
    return this.transaction(async (stores) => {
      const identityNow = async () => {
        const record = await stores.identity.getPeerIdentity(context.sender);
        return record ? identityStatusOf(record) : IdentityStatus.Trusted;
      };
      if (!ephemeral) {
        const pending = await stores.metadata.getPendingMessage(context.messageId);
        if (pending && pending.sender === context.sender && pending.senderDevice === senderDevice) {
          return { ...openContent(pending.content), fresh: false, identityChange: null, identity: await identityNow() };
        }
        if (await stores.metadata.hasProcessedEnvelope(context.messageId)) {
          return { alreadyProcessed: true, fresh: false, identityChange: null, identity: await identityNow() };
        }
      }

      const ciphertext = new Uint8Array(Buffer.from(envelope.ciphertext, 'base64'));
      const before = await stores.identity.getPeerIdentity(context.sender);
      const plaintext = await this.sessions.decrypt(context.sender, senderDevice, envelope.type, ciphertext, stores);
      if (sealed) {
        // libsignal checked the certificate's key against the key the message was sealed with; this
        // checks it against the identity key of the session it decrypted on. A mismatch rolls it all back.
        const sessionKey = (await stores.identity.getPeerIdentity(context.sender))?.identityKey;
        if (!sessionKey?.equals(sealed.certificateKey)) {
          throw new SealedSenderKeyMismatch(`the sender certificate names another key than ${context.sender}'s identity key`);
        }
      }
      await rememberPeerDevice(stores, context.sender, senderDevice);
      // The message that brings a changed key is marked changed, whatever the policy made of the key.
      const { change: identityChange, status: identity } = await this.trust.noticeDecrypted(stores, context.sender, senderDevice, before);
      if (!ephemeral) await stores.metadata.saveProcessedEnvelope(context.messageId, this.now());
      let opened = openContent(plaintext);
      if ('content' in opened && opened.content.kind === ContentKind.SyncCopy && context.sender !== this.localAccount().username) {
        opened = { malformed: new ContentFormatError(`a sync copy from ${context.sender}: only this account's devices send those`) };
      }
      if (!('content' in opened)) return { ...opened, fresh: true, identityChange, identity };
      if (opened.content.kind === ContentKind.SessionResetRequest && identity === IdentityStatus.Changed) {
        return { resetFromNewIdentity: true, fresh: true, identityChange, identity };
      }
      let sequence: SequenceSeen | undefined;
      if (isUserContent(opened.content.kind) || opened.content.kind === ContentKind.SyncCopy) {
        const received = { sender: context.sender, senderDevice, timestamp: opened.content.timestamp, contentDigest: sha256(plaintext) };
        if (await stores.metadata.hasReceivedMessage(received)) return { resendOfDelivered: true, fresh: true, identityChange, identity };
        await stores.metadata.saveReceivedMessage({ ...received, receivedAt: this.now() });
        // After every dedupe: a repeat never reaches the sequence, so it can neither open nor close a gap.
        if (!ephemeral) sequence = await this.followSequence(stores, context.sender, senderDevice, opened.content);
      }
      if (!ephemeral) await stores.metadata.savePendingMessage(context.messageId, { sender: context.sender, senderDevice, content: plaintext });
      return { ...opened, ...(sequence ? { sequence } : {}), fresh: true, identityChange, identity };
    });
  }

  /**
   * Applies a received text, bytes, sync copy or group message to the
   * sequence it belongs to: its sender device's to this account, for a sync
   * copy this account's device's to the copy's destination, for a group
   * message (`group`: its `groupSequenceKey`) the sender device's to the
   * group. Nothing for a record with
   * no sequence (content version 1). In the decryption's transaction.
   */
  private async followSequence(
    stores: SecureChatStores,
    sender: string,
    senderDevice: DeviceId,
    content: MessageContent,
    group?: string,
  ): Promise<SequenceSeen | undefined> {
    if (!content.sequence) return undefined;
    const recipient = group ?? (content.kind === ContentKind.SyncCopy ? syncCopyOf(content).destination : this.localAccount().username);
    const track = { sender, senderDevice, recipient };
    const seen = observeSequence(await stores.metadata.getSequenceTrack(sender, senderDevice, recipient), track, content.sequence);
    if (seen.track) await stores.metadata.saveSequenceTrack(seen.track);
    return { track, missing: seen.missing, filledGap: seen.filledGap };
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
      // Partial: the request goes to the one device whose message did not decrypt.
      return { to: peer, partial: true, messages: await this.encryptFor(peer, [device], plaintext, stores) } satisfies SendMessageRequest;
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
    this.queueDeliveryReceipt(message);
    if (this.autoAck) await message.ack().catch((error: unknown) => this.report(error));
  }

  private incomingMessage(
    envelope: Envelope,
    context: IncomingMessageContext,
    content: MessageContent,
    identity: IdentityStatus,
    group?: { id: string; title: string },
    filledGap = false,
  ): IncomingMessage {
    let acked: Promise<void> | undefined;
    // A sync copy is this account's own message to its destination: shown as sent, in that conversation.
    const copy = content.kind === ContentKind.SyncCopy ? syncCopyOf(content) : null;
    const message = copy ? copy.message : content;
    return {
      id: asMessageId(context.messageId),
      sender: context.sender,
      senderDevice: asDeviceId(context.senderDevice),
      outgoing: copy !== null || (group !== undefined && context.sender === this.account?.username),
      ...(group ? { group: { id: group.id, title: group.title } } : {}),
      conversation: copy ? copy.destination : context.sender,
      timestamp: message.timestamp,
      serverTimestamp: envelope.serverTimestamp,
      body: message.body.slice(),
      ...(message.kind === ContentKind.Text ? { text: decodeText(message.body) } : {}),
      identity,
      ...(message.sequence ? { sequence: message.sequence.number } : {}),
      filledGap,
      ack: () => {
        acked ??= this.ack(context.messageId).catch((error: unknown) => {
          acked = undefined;
          throw error;
        });
        return acked;
      },
    };
  }

  /**
   * The app has the message: its pending copy is dropped first, so that
   * from here on a redelivery of the envelope (its id is among the processed
   * ones) is acked silently and never shown again, whatever becomes of the
   * ack on its way to the relay. Then the relay is told.
   * @throws {SecureChatError} `AckFailed` when the relay could not be told; it
   *   delivers the envelope again later and the SDK acks it then.
   */
  private async ack(messageId: string): Promise<void> {
    await this.stores.metadata.removePendingMessage(messageId).catch((cause: unknown) => {
      // A leftover copy means a redelivery is shown again (at least once, never lost); it ages out of the bounded store.
      this.emit(
        ChatEvent.Error,
        new SecureChatError(SecureChatErrorCode.StoreFailure, `message ${messageId} handled; its pending copy was not removed`, { cause }),
      );
    });
    this.inFlight.delete(messageId);
    try {
      if (this.socket?.isOpen) {
        this.socket.send({ type: ClientFrameType.Ack, id: messageId });
      } else {
        await this.authorized((token) => this.transport.ackMessage(token, messageId));
      }
    } catch (cause) {
      // Already deleted (acked over a socket that then dropped): the goal is met.
      if (!SecureChatError.isRelay(cause, ErrorCode.MessageNotFound)) {
        throw new SecureChatError(SecureChatErrorCode.AckFailed, `ack of message ${messageId} failed; the relay will deliver it again and it is acked then`, {
          cause,
        });
      }
    }
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

/** Keeps a sent message in the sent-message log, once per device it went to (session repair resends it from there). */
async function logSent(
  stores: SecureChatStores,
  recipient: string,
  devices: DeviceId[],
  timestamp: number,
  serverTimestamp: number,
  content: Uint8Array,
): Promise<void> {
  for (const recipientDevice of devices) {
    await stores.metadata.saveSentMessage({ recipient, recipientDevice, timestamp, serverTimestamp, content });
  }
}

async function rememberPeerDevice(stores: SecureChatStores, username: string, deviceId: DeviceId): Promise<void> {
  const devices = await stores.metadata.getPeerDevices(username);
  if (!devices.includes(deviceId)) await stores.metadata.savePeerDevices(username, [...devices, deviceId]);
}

/** The relay's answer to `POST /v1/provisioning`, checked: the slot id becomes part of the link URI and the sealed message's associated data. */
function checkProvisioningSlot(slot: ProvisioningSlotResponse): ProvisioningSlotResponse {
  if (
    typeof slot?.id !== 'string' ||
    !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(slot.id) ||
    typeof slot.secret !== 'string' ||
    !PROVISIONING_SECRET_PATTERN.test(slot.secret) ||
    !Number.isSafeInteger(slot.expiresIn) ||
    slot.expiresIn < 1
  ) {
    throw new SecureChatError(SecureChatErrorCode.Network, 'the relay answered with a malformed provisioning slot');
  }
  return slot;
}

function newOutboxWaiter(): OutboxWaiter {
  let resolve!: (sent: SentMessage) => void;
  let reject!: (error: SecureChatError) => void;
  const promise = new Promise<SentMessage>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/**
 * What an outbox send's failure means. `transient`: the relay may not have
 * it, or failed; the same send can succeed later (kept, retried while
 * connected). `held`: this install cannot send now (signed out, a store
 * failed); kept for later. `permanent`: it would fail again; removed.
 * `RATE_LIMITED` (a bundle fetch) counts as permanent: it would hold every
 * later message, to every peer, for up to its `retryAfter`.
 */
function outboxFailureKind(error: SecureChatError): 'transient' | 'held' | 'permanent' {
  switch (error.code) {
    case SecureChatErrorCode.Network:
    case SecureChatErrorCode.ConnectionLost:
    case SecureChatErrorCode.Timeout:
      return 'transient';
    case SecureChatErrorCode.InvalidState:
    case SecureChatErrorCode.SessionExpired:
    case SecureChatErrorCode.CredentialsChanged:
    case SecureChatErrorCode.DeviceUnlinked:
    case SecureChatErrorCode.StoreFailure:
    case SecureChatErrorCode.StoreTampered:
    case SecureChatErrorCode.StoreLocked:
      return 'held';
    default:
      break;
  }
  if (error.relayCode === ErrorCode.Internal || (error.status !== undefined && error.status >= 500)) return 'transient';
  if (isAuthRefusal(error) || error.relayCode === ErrorCode.CredentialsChanged || error.relayCode === ErrorCode.DeviceUnlinked) return 'held';
  return 'permanent';
}

/**
 * The id of a sealed send's second request (the sync copies to this
 * account): derived from the send's id, so a retry repeats it and the relay
 * stores it once (sealed send ids are one space at the relay).
 */
function storeFailure(cause: unknown, message: string): SecureChatError {
  return SecureChatError.is(cause) ? cause : new SecureChatError(SecureChatErrorCode.StoreFailure, message, { cause });
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
    typeof envelope.sourceDevice !== 'number' ||
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
