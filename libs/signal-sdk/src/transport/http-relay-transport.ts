import WebSocket from 'ws';
import type {
  AccountLookupResponse,
  AuthResponse,
  BackupResponse,
  ChangePasswordRequest,
  ClientFrame,
  DeleteAccountRequest,
  DeviceMismatch,
  ErrorBody,
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
  StaleDeviceList,
  UploadBackupRequest,
  UnidentifiedAccessRequest,
  UploadKeysRequest,
} from '@chat/protocol';
import { UNIDENTIFIED_ACCESS_KEY_HEADER } from '@chat/protocol';
import { API_PREFIX, DEVICE_ID_MAX, DEVICE_ID_MIN, MAX_WS_FRAME_BYTES, WS_PATH, type ErrorCode } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import type { Credentials, RelaySocket, RelaySocketListener, RelayTransport } from './relay-transport.js';

export interface RelayUrls {
  /** Base URL for HTTP, without a trailing slash. */
  http: string;
  /** URL of the WebSocket endpoint. */
  ws: string;
}

/**
 * Derives the relay's HTTP and WebSocket URLs from its base URL
 * (http -> ws, https -> wss, plus `WS_PATH`).
 * @throws {SecureChatError} `InvalidOptions` when `relayUrl` is not an http(s) URL without query or fragment.
 */
export function relayUrlsOf(relayUrl: string): RelayUrls {
  let url: URL;
  try {
    url = new URL(relayUrl);
  } catch (cause) {
    throw new SecureChatError(SecureChatErrorCode.InvalidOptions, `relayUrl is not a URL: ${JSON.stringify(relayUrl)}`, { cause });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new SecureChatError(SecureChatErrorCode.InvalidOptions, `relayUrl must be http: or https:, not ${url.protocol}`);
  }
  if (url.search || url.hash || url.username || url.password) {
    throw new SecureChatError(SecureChatErrorCode.InvalidOptions, 'relayUrl must not carry credentials, a query or a fragment');
  }
  const base = url.href.replace(/\/+$/, '');
  const wsBase = (url.protocol === 'https:' ? 'wss:' : 'ws:') + base.slice(url.protocol.length);
  return { http: base, ws: wsBase + WS_PATH };
}

function isErrorBody(value: unknown): value is ErrorBody {
  return typeof value === 'object' && value !== null && typeof (value as ErrorBody).code === 'string';
}

/** Seconds, from the body's `retryAfter` or else a `Retry-After` header in seconds; undefined when neither is a whole number >= 0. */
function retryAfterOf(body: ErrorBody, header: string | null | undefined): number | undefined {
  const seconds = typeof body.retryAfter === 'number' ? body.retryAfter : header != null && /^\d+$/.test(header) ? Number(header) : undefined;
  return seconds !== undefined && Number.isSafeInteger(seconds) && seconds >= 0 ? seconds : undefined;
}

/**
 * The `mismatched` and `stale` lists of a `MISMATCHED_DEVICES` or
 * `STALE_DEVICES` refusal (HTTP body or `error` frame), keeping only
 * well-formed entries; absent when the relay sent none.
 */
export function deviceListsOf(body: Pick<ErrorBody, 'mismatched' | 'stale'>): { mismatched?: DeviceMismatch[]; stale?: StaleDeviceList[] } {
  const isDeviceIds = (value: unknown): value is number[] =>
    Array.isArray(value) && value.every((id) => Number.isInteger(id) && id >= DEVICE_ID_MIN && id <= DEVICE_ID_MAX);
  const isEntry = (value: unknown): value is Record<string, unknown> & { username: string } =>
    typeof value === 'object' && value !== null && typeof (value as { username?: unknown }).username === 'string';
  const lists: { mismatched?: DeviceMismatch[]; stale?: StaleDeviceList[] } = {};
  if (Array.isArray(body.mismatched)) {
    lists.mismatched = body.mismatched
      .filter((entry: unknown) => isEntry(entry) && isDeviceIds(entry.missing) && isDeviceIds(entry.extra))
      .map(({ username, missing, extra }) => ({ username, missing: [...missing], extra: [...extra] }));
  }
  if (Array.isArray(body.stale)) {
    lists.stale = body.stale
      .filter((entry: unknown) => isEntry(entry) && isDeviceIds(entry.devices))
      .map(({ username, devices }) => ({ username, devices: [...devices] }));
  }
  return lists;
}

function relayRejection(status: number, body: unknown, retryAfterHeader?: string | null): SecureChatError {
  if (isErrorBody(body)) {
    return new SecureChatError(SecureChatErrorCode.RelayRejected, `relay refused (${status} ${body.code})`, {
      relayCode: body.code as ErrorCode,
      status,
      details: Array.isArray(body.details) ? body.details.filter((d) => typeof d === 'string') : undefined,
      retryAfter: retryAfterOf(body, retryAfterHeader),
      ...deviceListsOf(body),
    });
  }
  return new SecureChatError(SecureChatErrorCode.Network, `relay answered ${status} without an error body`, { status });
}

/** The relay over HTTP (global `fetch`) and WebSocket (`ws`). */
export class HttpRelayTransport implements RelayTransport {
  private readonly urls: RelayUrls;

  constructor(relayUrl: string) {
    this.urls = relayUrlsOf(relayUrl);
  }

  register(credentials: Credentials): Promise<AuthResponse> {
    return this.request('POST', '/auth/register', { body: credentials });
  }

  login(credentials: Credentials, deviceId?: number): Promise<AuthResponse> {
    return this.request('POST', '/auth/login', { body: deviceId === undefined ? credentials : { ...credentials, deviceId } });
  }

  refresh(refreshToken: string): Promise<AuthResponse> {
    return this.request('POST', '/auth/refresh', { body: { refreshToken } });
  }

  changePassword(accessToken: string, request: ChangePasswordRequest): Promise<AuthResponse> {
    return this.request('POST', '/auth/password', { accessToken, body: request });
  }

  async deleteAccount(accessToken: string, request: DeleteAccountRequest): Promise<void> {
    await this.request('DELETE', '/account', { accessToken, body: request });
  }

  async uploadKeys(accessToken: string, keys: UploadKeysRequest): Promise<void> {
    await this.request('PUT', '/keys', { accessToken, body: keys });
  }

  getPreKeyCount(accessToken: string): Promise<PreKeyCountResponse> {
    return this.request('GET', '/keys', { accessToken });
  }

  getPreKeyBundle(accessToken: string, username: string): Promise<PreKeyBundleResponse> {
    return this.request('GET', `/keys/${encodeURIComponent(username)}`, { accessToken });
  }

  sendMessage(accessToken: string, message: SendMessageRequest): Promise<SendMessageResponse> {
    return this.request('POST', '/messages', { accessToken, body: message });
  }

  async ackMessage(accessToken: string, messageId: string): Promise<void> {
    await this.request('DELETE', `/messages/${encodeURIComponent(messageId)}`, { accessToken });
  }

  async putBackup(accessToken: string, backup: UploadBackupRequest): Promise<void> {
    await this.request('PUT', '/backup', { accessToken, body: backup });
  }

  getBackup(accessToken: string): Promise<BackupResponse> {
    return this.request('GET', '/backup', { accessToken });
  }

  async deleteBackup(accessToken: string): Promise<void> {
    await this.request('DELETE', '/backup', { accessToken });
  }

  // --- devices and linking ---

  createProvisioningSlot(): Promise<ProvisioningSlotResponse> {
    return this.request('POST', '/provisioning', {});
  }

  async putProvisioningMessage(accessToken: string, slotId: string, request: ProvisioningMessageRequest): Promise<void> {
    await this.request('PUT', `/provisioning/${encodeURIComponent(slotId)}`, { accessToken, body: request });
  }

  async receiveProvisioningMessage(slotId: string, secret: string): Promise<ProvisioningMessageResponse | null> {
    // 204 (not approved yet) has no body; 200 carries the message.
    const answer = await this.request<ProvisioningMessageResponse | undefined>('POST', `/provisioning/${encodeURIComponent(slotId)}/receive`, {
      body: { secret },
    });
    if (answer === undefined) return null;
    if (typeof answer?.message !== 'string') throw new SecureChatError(SecureChatErrorCode.Network, 'the relay answered without a provisioning message');
    return answer;
  }

  linkDevice(request: LinkDeviceRequest): Promise<AuthResponse> {
    return this.request('POST', '/devices/link', { body: request });
  }

  listDevices(accessToken: string): Promise<ListDevicesResponse> {
    return this.request('GET', '/devices', { accessToken });
  }

  async unlinkDevice(accessToken: string, deviceId: number): Promise<void> {
    await this.request('DELETE', `/devices/${encodeURIComponent(String(deviceId))}`, { accessToken });
  }

  // --- sealed sender ---

  getSenderCertificate(accessToken: string): Promise<SenderCertificateResponse> {
    return this.request('GET', '/certificate/delivery', { accessToken });
  }

  async putUnidentifiedAccess(accessToken: string, request: UnidentifiedAccessRequest): Promise<void> {
    await this.request('PUT', '/account/unidentified-access', { accessToken, body: request });
  }

  /** No Authorization header: a sealed send must not name its sender. */
  sendSealed(accessKey: string, request: SealedSendRequest): Promise<SendMessageResponse> {
    return this.request('POST', '/messages/sealed', { body: request, headers: { [UNIDENTIFIED_ACCESS_KEY_HEADER]: accessKey } });
  }

  sendMultiRecipient(auth: { accessKey: string } | { accessToken: string }, request: MultiRecipientSendRequest): Promise<SendMessageResponse> {
    if ('accessToken' in auth) return this.request('POST', '/messages/multi-recipient', { accessToken: auth.accessToken, body: request });
    return this.request('POST', '/messages/multi-recipient', { body: request, headers: { [UNIDENTIFIED_ACCESS_KEY_HEADER]: auth.accessKey } });
  }

  lookupAccount(accessToken: string, accountId: string): Promise<AccountLookupResponse> {
    return this.request('GET', `/accounts/${encodeURIComponent(accountId)}`, { accessToken });
  }

  // --- the WebSocket ---

  openSocket(accessToken: string, listener: RelaySocketListener): Promise<RelaySocket> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(this.urls.ws, {
        headers: { Authorization: `Bearer ${accessToken}` },
        maxPayload: MAX_WS_FRAME_BYTES,
      });
      let opened = false;
      /** The upgrade was refused: its answer, not the abort that follows, says why. */
      let refused = false;

      socket.on('unexpected-response', (_request, response) => {
        refused = true;
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => {
          let body: unknown;
          try {
            body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            body = undefined;
          }
          const retryAfter = response.headers['retry-after'];
          reject(relayRejection(response.statusCode ?? 0, body, typeof retryAfter === 'string' ? retryAfter : undefined));
          socket.terminate();
        });
        // Aborting before the body is read would lose the relay's error code (DEVICE_UNLINKED, CREDENTIALS_CHANGED...).
        response.on('error', (cause) => {
          reject(new SecureChatError(SecureChatErrorCode.Network, 'the refused WebSocket upgrade was cut off', { cause }));
          socket.terminate();
        });
      });
      socket.on('error', (cause) => {
        if (!opened && !refused) reject(new SecureChatError(SecureChatErrorCode.Network, 'WebSocket connection failed', { cause }));
      });
      socket.on('open', () => {
        opened = true;
        resolve(new WsRelaySocket(socket));
      });
      socket.on('message', (data, isBinary) => {
        if (isBinary) return;
        let frame: unknown;
        try {
          frame = JSON.parse(data.toString());
        } catch {
          return;
        }
        if (typeof frame === 'object' && frame !== null && typeof (frame as ServerFrame).type === 'string') {
          listener.onFrame(frame as ServerFrame);
        }
      });
      socket.on('close', (code, reason) => {
        if (opened) listener.onClose(code, reason.toString());
      });
    });
  }

  private async request<T>(method: string, path: string, options: { accessToken?: string; body?: unknown; headers?: Record<string, string> }): Promise<T> {
    const headers: Record<string, string> = { ...options.headers, accept: 'application/json' };
    if (options.body !== undefined) headers['content-type'] = 'application/json';
    if (options.accessToken) headers['authorization'] = `Bearer ${options.accessToken}`;
    let response: Response;
    try {
      response = await fetch(this.urls.http + API_PREFIX + path, {
        method,
        headers,
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
      });
    } catch (cause) {
      throw new SecureChatError(SecureChatErrorCode.Network, `${method} ${API_PREFIX}${path} failed`, { cause });
    }
    const text = await response.text();
    let body: unknown;
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch (cause) {
      if (response.ok) throw new SecureChatError(SecureChatErrorCode.Network, 'relay answered with invalid JSON', { cause });
    }
    if (!response.ok) throw relayRejection(response.status, body, response.headers.get('retry-after'));
    return body as T;
  }
}

class WsRelaySocket implements RelaySocket {
  constructor(private readonly socket: WebSocket) {}

  get isOpen(): boolean {
    return this.socket.readyState === WebSocket.OPEN;
  }

  send(frame: ClientFrame): void {
    if (!this.isOpen) throw new SecureChatError(SecureChatErrorCode.ConnectionLost, 'the connection is not open');
    this.socket.send(JSON.stringify(frame));
  }

  close(code = 1000, reason = ''): void {
    if (this.socket.readyState === WebSocket.CONNECTING) this.socket.terminate();
    else this.socket.close(code, reason);
  }
}
