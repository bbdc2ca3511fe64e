// The public API of @chat/signal-sdk. Exports are listed by hand: anything
// not named here is internal and may change without notice.
export {
  SecureChatClient,
  type AccountDevice,
  type LinkingSession,
  type PeerIdentity,
  type SecureChatClientOptions,
  type SecureChatLogger,
  type SentMessage,
} from './secure-chat-client.js';
export { IdentityStatus, type IdentityChanged, type IdentityPolicy } from './identity/identity-trust.js';
export { SAFETY_NUMBER_ITERATIONS, SAFETY_NUMBER_VERSION, type SafetyNumber } from './identity/safety-number.js';
export {
  DEFAULT_KEY_GRACE_PERIOD_MS,
  DEFAULT_KEY_MAINTENANCE_INTERVAL_MS,
  DEFAULT_KEY_ROTATION_INTERVAL_MS,
} from './keys/key-maintenance.js';
export {
  ChatEvent,
  ConnectionState,
  SessionResetReason,
  TypedEventEmitter,
  type ChatEventHandlerMap,
  type IncomingMessage,
  type MessagesMissing,
  type OutboxSendFailed,
  type OutboxSent,
  type Receipt,
  type SessionReset,
  type Typing,
} from './events.js';
export {
  SecureChatError,
  SecureChatErrorCode,
  type IncomingMessageContext,
  type SecureChatErrorOptions,
} from './errors.js';
export type { DeviceId, KyberPreKeyId, MessageId, PreKeyId, RegistrationId, SignedPreKeyId } from './ids.js';
export {
  KeyIdKind,
  MAX_PENDING_MESSAGES,
  MAX_PROCESSED_ENVELOPES,
  MAX_RECEIVED_MESSAGES,
  MAX_SENT_MESSAGES_PER_PEER,
  SESSION_REPAIR_WINDOW_MS,
  SecureChatIdentityKeyStore,
  SecureChatKyberPreKeyStore,
  SecureChatMetadataStore,
  SecureChatSessionStore,
  SecureChatSignedPreKeyStore,
  type AccountRecord,
  type LocalIdentity,
  type OutgoingMessageRecord,
  type PeerIdentityRecord,
  type PendingMessage,
  type ReceivedMessageRecord,
  type SecureChatStores,
  type SentMessageRecord,
  type SignedKeyIds,
  type SignedKeysState,
  type TrustedIdentity,
} from './stores/stores.js';
export { amendStores } from './stores/memory-stores.js';
export {
  CONTENT_VERSION,
  UNSEQUENCED_CONTENT_VERSION,
  ContentKind,
  MAX_BODY_BYTES,
  MAX_RECEIPT_TIMESTAMPS,
  PADDING_BLOCK,
  SESSION_RESET_REQUEST_BODY_BYTES,
} from './session/content.js';
export { DEFAULT_SESSION_RESET_INTERVAL_MS } from './session/session-repair.js';
export {
  MAX_MISSING_RANGES,
  MAX_SEQUENCE_NUMBER,
  type MessageSequence,
  type SequenceRange,
  type SequenceTrack,
} from './session/message-sequence.js';
export { type GroupInfo, type GroupUpdated, type SentGroupMessage } from './groups/group-service.js';
export { MAX_GROUP_MEMBERS, MAX_GROUP_TITLE_BYTES, type GroupMember, type GroupState } from './groups/group-wire.js';
export type { GroupRecord } from './groups/group-rules.js';
export { generateRecoverySecret } from './backup/recovery-secret.js';
export {
  BACKUP_FORMAT_VERSION,
  BACKUP_KDF_LIMITS,
  DEFAULT_BACKUP_KDF,
  type BackupKdfParams,
} from './backup/backup-format.js';
export type { BackOffOptions } from './transport/back-off.js';
export { DEFAULT_RETRY_AFTER_SECONDS } from './transport/retry-after.js';
export type { Credentials, RelaySocket, RelaySocketListener, RelayTransport } from './transport/relay-transport.js';
export { HttpRelayTransport } from './transport/http-relay-transport.js';
