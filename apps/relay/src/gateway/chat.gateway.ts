import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { Inject, Logger, type OnModuleDestroy } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import type { Express } from 'express';
import { WebSocketGateway, type OnGatewayConnection, type OnGatewayDisconnect, type OnGatewayInit } from '@nestjs/websockets';
import type { ServerOptions, WebSocket, WebSocketServer } from 'ws';
import {
  AckFrame,
  ClientFrameType,
  CloseCode,
  ErrorCode,
  MAX_WS_FRAME_BYTES,
  SendFrame,
  ServerFrameType,
  WS_PATH,
  type ServerFrame,
} from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { TokenVerifier } from '../auth/token-verifier.js';
import { toRelayException } from '../common/http-exception.filter.js';
import { RateLimits } from '../common/rate-limits.js';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';
import { KeysService } from '../keys/keys.service.js';
import { MessagesService } from '../messages/messages.service.js';
import { RelayMetrics } from '../metrics/relay-metrics.js';
import { ShutdownState } from '../shutdown/shutdown-state.js';
import { errorFrame, parseClientFrame, requestIdOf, validateFrame } from './client-frames.js';
import { DeliveryService } from './delivery.service.js';
import { DeviceConnection } from './device-connection.js';
import { plainAckFrame, plainSendFrame } from './frame-fast-path.js';
import { clientAddressOfUpgrade, HandshakeAuthenticator } from './handshake.js';
import { holdWritesUntilTickEnd } from './held-writes.js';

/** What the gateway knows about one open socket. */
interface SocketSession {
  device: AuthenticatedDevice;
  /** The handshake's place in the order of all handshakes (of every instance); the later one of a device wins. */
  generation: Promise<number>;
  /** Resolves once the device's row is known; sends do not wait for it, acks do. */
  deviceRowId: Promise<string>;
  connection?: DeviceConnection;
  answeredPing: boolean;
  /** The payload of the latest ping: only a pong echoing it answers (section 5.5.3), so a client must have read up to it. */
  pingPayload?: Buffer;
  expiryTimer?: NodeJS.Timeout;
  closed: boolean;
  /** Frames read and not yet answered (sends waiting for their commit, acks for their delete). */
  answering: number;
}

/**
 * Frames one socket may have read and not yet answered. Past it the socket
 * is no longer read (TCP pushes back on the client) until half are
 * answered, so a client that writes without waiting holds a bounded share
 * of the relay's memory and of each group commit.
 */
export const MAX_FRAMES_IN_PROGRESS = 256;

/** Random bytes in each heartbeat ping, which the pong must echo. */
const PING_PAYLOAD_BYTES = 8;

/** setTimeout's ceiling; a longer token lifetime is waited out in steps. */
const MAX_TIMER_DELAY_MS = 2 ** 31 - 1;

/**
 * `/v1/ws`: one authenticated socket per device, carrying its stored queue
 * at most `MAX_INFLIGHT_DELIVERIES` unacked frames at a time, `queue-empty`,
 * then `keys-low` if the device should top up its one-time prekeys, then
 * new messages and notices, and its `send`/`ack` frames.
 *
 * The handshake is admitted by ws's `verifyClient`, installed on the
 * server in `afterInit`: the client address's connection cap, then the
 * token, so an unauthenticated upgrade never becomes a socket; this works
 * with Nest's plain `WsAdapter`. Frames are read here
 * rather than through `@SubscribeMessage`, because the wire frames carry
 * `type` (not Nest's `event`/`data`) and every frame, including malformed
 * ones, must be answered.
 */
@WebSocketGateway({ path: WS_PATH, maxPayload: MAX_WS_FRAME_BYTES })
export class ChatGateway implements OnGatewayInit, OnGatewayConnection, OnGatewayDisconnect, OnModuleDestroy {
  private readonly logger = new Logger(ChatGateway.name);
  private readonly sessions = new WeakMap<WebSocket, SocketSession>();
  private readonly handshake: HandshakeAuthenticator;
  private heartbeat?: NodeJS.Timeout;

  constructor(
    private readonly messages: MessagesService,
    private readonly keys: KeysService,
    private readonly delivery: DeliveryService,
    private readonly tokenVerifier: TokenVerifier,
    @Inject(RELAY_CONFIG) private readonly config: RelayConfig,
    private readonly rateLimits: RateLimits,
    private readonly shutdown: ShutdownState,
    private readonly metrics: RelayMetrics,
    httpAdapterHost: HttpAdapterHost,
  ) {
    this.handshake = new HandshakeAuthenticator(tokenVerifier, {
      // Read at each upgrade: the HTTP adapter's app exists (with its `trust proxy`) by the time the port listens.
      clientAddressOf: (request) => clientAddressOfUpgrade(httpAdapterHost.httpAdapter.getInstance<Express>(), request),
      maxConnectionsPerAddress: config.maxWebSocketsPerIp,
    });
  }

  afterInit(server: WebSocketServer): void {
    // ws reads `options.verifyClient` on every upgrade; the server exists before the HTTP port listens.
    (server.options as ServerOptions).verifyClient = this.handshake.verifyClient;
    this.heartbeat = setInterval(() => this.checkHeartbeats(server), this.config.heartbeatIntervalMs);
    this.heartbeat.unref();
  }

  onModuleDestroy(): void {
    clearInterval(this.heartbeat);
  }

  handleConnection(socket: WebSocket, request: IncomingMessage): void {
    const device = this.handshake.deviceOf(request);
    if (!device) {
      // Only reachable if the server was created without our verifyClient: fail closed.
      socket.close(CloseCode.PolicyViolation, ErrorCode.AuthenticationRequired);
      return;
    }
    const session: SocketSession = {
      device,
      generation: this.delivery.nextGeneration(),
      deviceRowId: this.messages.deviceRowIdOf(device),
      answeredPing: true,
      closed: false,
      answering: 0,
    };
    // Also awaited by acks and the queue drain; this keeps an unawaited rejection from being unhandled.
    session.deviceRowId.catch(() => undefined);
    session.generation.catch(() => undefined);
    this.sessions.set(socket, session);
    socket.on('pong', (payload: Buffer) => {
      if (session.pingPayload?.equals(payload)) session.answeredPing = true;
    });
    socket.on('message', (data: Buffer, isBinary: boolean) => {
      // Graceful shutdown: a frame that arrives while draining is not read (the socket gets 1001 next and the
      // client resends it elsewhere); one already being answered is counted, so the drain waits for its write.
      if (this.shutdown.isDraining) return;
      if (++session.answering >= MAX_FRAMES_IN_PROGRESS && !socket.isPaused) socket.pause();
      const answered = this.answerFrame(socket, session, isBinary ? data : data.toString('utf8')).finally(() => {
        if (--session.answering <= MAX_FRAMES_IN_PROGRESS / 2 && socket.isPaused) socket.resume();
      });
      void this.shutdown.track(answered);
    });
    this.scheduleExpiry(socket, session);
    void this.startDelivery(socket, session);
  }

  handleDisconnect(socket: WebSocket): void {
    const session = this.sessions.get(socket);
    if (!session) return;
    session.closed = true;
    clearTimeout(session.expiryTimer);
    if (session.connection) this.delivery.detach(session.connection);
  }

  /** Every frame gets its answer: `sent` for a send, nothing for an ack, `error` for any refusal. */
  private async answerFrame(socket: WebSocket, session: SocketSession, data: string | Buffer): Promise<void> {
    const parsed = parseClientFrame(data);
    try {
      // Every frame, even one refused next, spends the account's inbound byte budget (as HTTP bodies do).
      await this.rateLimits.consumeInboundBytes({ accountId: session.device.accountId }, typeof data === 'string' ? Buffer.byteLength(data) : data.length);
    } catch (error) {
      this.sendFrame(socket, errorFrame(toRelayException(error), parsed.kind === 'frame' ? requestIdOf(parsed.frame) : parsed.answer.requestId));
      return;
    }
    if (parsed.kind === 'refused') {
      this.sendFrame(socket, parsed.answer);
      return;
    }
    try {
      switch (parsed.type) {
        case ClientFrameType.Send: {
          const { requestId, message } = plainSendFrame(parsed.frame) ?? validateFrame(SendFrame, parsed.frame);
          // The same limits as POST /v1/messages.
          await this.rateLimits.consumeSend(session.device, message.to);
          const { serverTimestamp } = await this.messages.send(session.device, message);
          this.sendFrame(socket, { type: ServerFrameType.Sent, requestId, serverTimestamp });
          return;
        }
        case ClientFrameType.Ack: {
          // Not answered; an id that is not this device's message (or an ephemeral one) changes nothing.
          const { id } = plainAckFrame(parsed.frame) ?? validateFrame(AckFrame, parsed.frame);
          await this.messages.ackQueued(await session.deviceRowId, id);
          return;
        }
      }
    } catch (error) {
      const exception = toRelayException(error);
      if (exception.code === ErrorCode.Internal) {
        this.logger.error(`A ${parsed.type} frame failed`, error instanceof Error ? error.stack : String(error));
      }
      this.sendFrame(socket, errorFrame(exception, requestIdOf(parsed.frame)));
    }
  }

  /**
   * Registers the connection, checks the credentials once more, then lets it
   * fill its delivery window from the queue. Stored messages reach it
   * through its reads only (a message stored now wakes it), so nothing is
   * held back in memory.
   */
  private async startDelivery(socket: WebSocket, session: SocketSession): Promise<void> {
    try {
      const [deviceRowId, generation] = await Promise.all([session.deviceRowId, session.generation]);
      const connection = new DeviceConnection(deviceRowId, session.device.accountId, socket, generation, {
        window: this.config.maxInflightDeliveries,
        source: {
          read: (excluding, limit) => this.messages.readQueue(deviceRowId, excluding, limit),
          connectNotice: () => this.keys.keysLowNotice(deviceRowId),
        },
        onFailure: (error) => this.queueReadFailed(socket, error),
        onDelivered: (envelope) => this.metrics.messageDelivered(envelope.serverTimestamp),
        beforeSend: () => holdWritesUntilTickEnd(socket),
        everyStoreHanded: this.delivery.everyStoreHanded,
      });
      if (session.closed) return;
      // Set before attaching, so that a socket closing meanwhile is detached (and its subscriptions dropped).
      session.connection = connection;
      if (!(await this.delivery.attach(connection)) || session.closed) return;
      if (!(await this.credentialsStillCurrent(session))) {
        connection.close(CloseCode.CredentialsChanged, ErrorCode.CredentialsChanged);
        return;
      }
      connection.start();
    } catch (error) {
      this.queueReadFailed(socket, error);
    }
  }

  private queueReadFailed(socket: WebSocket, error: unknown): void {
    const exception = toRelayException(error);
    if (exception.code === ErrorCode.Internal) {
      this.logger.error('Sending the stored queue failed', error instanceof Error ? error.stack : String(error));
    }
    socket.close(CloseCode.InternalError, exception.code);
  }

  /**
   * Checked once more after `attach`: a password change or deletion that
   * committed after the handshake's check closed the account's attached
   * sockets, and this one attached after that, so it reads the change here.
   */
  private async credentialsStillCurrent(session: SocketSession): Promise<boolean> {
    try {
      await this.tokenVerifier.assertCurrent(session.device);
      return true;
    } catch (error) {
      const code = toRelayException(error).code;
      if (code === ErrorCode.CredentialsChanged || code === ErrorCode.InvalidToken) return false;
      throw error;
    }
  }

  /**
   * RFC 6455 ping/pong: a socket that has not answered the previous ping is
   * dead, or its client stopped reading. Each ping carries fresh random
   * bytes and only a pong with the same bytes counts: section 5.5.3 allows
   * unsolicited pongs, and a client that stopped reading (while the relay's
   * writes pile up behind the ping) could otherwise send those to stay open.
   */
  private checkHeartbeats(server: WebSocketServer): void {
    for (const socket of server.clients) {
      const session = this.sessions.get(socket);
      if (!session) continue;
      if (!session.answeredPing) {
        socket.terminate();
        continue;
      }
      session.answeredPing = false;
      session.pingPayload = randomBytes(PING_PAYLOAD_BYTES);
      socket.ping(session.pingPayload);
    }
  }

  private scheduleExpiry(socket: WebSocket, session: SocketSession): void {
    const remaining = session.device.expiresAt * 1000 - Date.now();
    session.expiryTimer = setTimeout(
      () => {
        if (session.closed) return;
        if (session.device.expiresAt * 1000 <= Date.now()) socket.close(CloseCode.TokenExpired, ErrorCode.TokenExpired);
        else this.scheduleExpiry(socket, session);
      },
      Math.min(Math.max(remaining, 0), MAX_TIMER_DELAY_MS),
    );
  }

  private sendFrame(socket: WebSocket, frame: ServerFrame): void {
    if (socket.readyState !== socket.OPEN) return;
    holdWritesUntilTickEnd(socket);
    socket.send(JSON.stringify(frame));
  }
}
