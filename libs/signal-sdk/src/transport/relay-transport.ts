import type {
  AccountLookupResponse,
  AuthResponse,
  BackupResponse,
  ChangePasswordRequest,
  ClientFrame,
  DeleteAccountRequest,
  LinkDeviceRequest,
  ListDevicesResponse,
  PreKeyBundleResponse,
  PreKeyCountResponse,
  ProvisioningMessageRequest,
  ProvisioningMessageResponse,
  ProvisioningSlotResponse,
  MultiRecipientSendRequest,
  SealedSendRequest,
  SenderCertificateResponse,
  SendMessageRequest,
  SendMessageResponse,
  ServerFrame,
  UploadBackupRequest,
  UnidentifiedAccessRequest,
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
  /** `deviceId`: the device to sign in as (the relay's default is 1, the primary). */
  login(credentials: Credentials, deviceId?: number): Promise<AuthResponse>;
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

  // --- devices and linking (docs/protocol.md, "Devices") ---
  /** Opens a provisioning slot for a new device (no authentication). */
  createProvisioningSlot(): Promise<ProvisioningSlotResponse>;
  /** Approves the link: stores the sealed provisioning message in the slot (the approving device's token). */
  putProvisioningMessage(accessToken: string, slotId: string, request: ProvisioningMessageRequest): Promise<void>;
  /** The sealed message once the slot is approved (200), null before (204). */
  receiveProvisioningMessage(slotId: string, secret: string): Promise<ProvisioningMessageResponse | null>;
  /** Links the new device with the approved slot (one use); answers the new device's tokens. */
  linkDevice(request: LinkDeviceRequest): Promise<AuthResponse>;
  listDevices(accessToken: string): Promise<ListDevicesResponse>;
  unlinkDevice(accessToken: string, deviceId: number): Promise<void>;

  // --- sealed sender (docs/protocol.md, "Sealed sender") ---
  /** `GET /v1/certificate/delivery`: this device's sender certificate. */
  getSenderCertificate(accessToken: string): Promise<SenderCertificateResponse>;
  /** `PUT /v1/account/unidentified-access`: the account's access key and whether it takes sealed mail from anyone. */
  putUnidentifiedAccess(accessToken: string, request: UnidentifiedAccessRequest): Promise<void>;
  /**
   * `POST /v1/messages/sealed`: WITHOUT the access token (the relay must not
   * learn the sender), with the recipient's access key (base64) in
   * `Unidentified-Access-Key`. Rejects with `SEALED_SENDER_REFUSED` for a wrong key.
   */
  sendSealed(accessKey: string, request: SealedSendRequest): Promise<SendMessageResponse>;
  /**
   * `POST /v1/messages/multi-recipient`: either unauthenticated with the XOR
   * of the recipients' access keys (base64), or, as a fallback, authenticated.
   */
  sendMultiRecipient(auth: { accessKey: string } | { accessToken: string }, request: MultiRecipientSendRequest): Promise<SendMessageResponse>;
  /** `GET /v1/accounts/:accountId`: the username of an account id (`UNKNOWN_RECIPIENT` for none). */
  lookupAccount(accessToken: string, accountId: string): Promise<AccountLookupResponse>;

  /** Resolves once the WebSocket is open; rejects when the upgrade is refused or fails. */
  openSocket(accessToken: string, listener: RelaySocketListener): Promise<RelaySocket>;
}
