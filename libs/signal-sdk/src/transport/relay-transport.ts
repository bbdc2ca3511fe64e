import type {
  AuthResponse,
  BackupResponse,
  ChangePasswordRequest,
  ClientFrame,
  DeleteAccountRequest,
  PreKeyBundleResponse,
  PreKeyCountResponse,
  SendMessageRequest,
  SendMessageResponse,
  ServerFrame,
  UploadBackupRequest,
  UploadKeysRequest,
} from '@chat/protocol';

export interface Credentials {
  username: string;
  password: string;
}

/** Receives what an open socket delivers. */
export interface RelaySocketListener {
  onFrame(frame: ServerFrame): void;
  /** Called once, when the socket closed for any reason. */
  onClose(code: number, reason: string): void;
}

export interface RelaySocket {
  readonly isOpen: boolean;
  /** @throws {SecureChatError} `ConnectionLost` when the socket is not open. */
  send(frame: ClientFrame): void;
  close(code?: number, reason?: string): void;
}

/**
 * Everything the client asks of the relay. The default implementation speaks
 * HTTP and WebSocket (`HttpRelayTransport`); tests may pass a fake.
 * Every method rejects with a `SecureChatError`: `RelayRejected` carrying the
 * relay's `ErrorCode` (and `retryAfter` for `RATE_LIMITED`), or `Network`.
 */
export interface RelayTransport {
  register(credentials: Credentials): Promise<AuthResponse>;
  login(credentials: Credentials): Promise<AuthResponse>;
  refresh(refreshToken: string): Promise<AuthResponse>;
  /** Answers with the device's new tokens; every earlier token of the account stops working. */
  changePassword(accessToken: string, request: ChangePasswordRequest): Promise<AuthResponse>;
  deleteAccount(accessToken: string, request: DeleteAccountRequest): Promise<void>;
  uploadKeys(accessToken: string, keys: UploadKeysRequest): Promise<void>;
  getPreKeyCount(accessToken: string): Promise<PreKeyCountResponse>;
  getPreKeyBundle(accessToken: string, username: string): Promise<PreKeyBundleResponse>;
  sendMessage(accessToken: string, message: SendMessageRequest): Promise<SendMessageResponse>;
  ackMessage(accessToken: string, messageId: string): Promise<void>;
  putBackup(accessToken: string, backup: UploadBackupRequest): Promise<void>;
  /** Rejects with the relay's `BACKUP_NOT_FOUND` when the account has none. */
  getBackup(accessToken: string): Promise<BackupResponse>;
  deleteBackup(accessToken: string): Promise<void>;
  /** Resolves once the WebSocket is open; rejects when the upgrade is refused or fails. */
  openSocket(accessToken: string, listener: RelaySocketListener): Promise<RelaySocket>;
}
