import { Logger } from '@nestjs/common';
import { WsAdapter } from '@nestjs/platform-ws';
import type { MessageMappingProperties } from '@nestjs/websockets';
import type { Observable } from 'rxjs';
import type { WebSocket, WebSocketServer } from 'ws';

/**
 * Nest's `WsAdapter` logs every socket error at `error` level. An error on one
 * socket is the client's doing (a frame over `maxPayload`, invalid UTF-8, a
 * bad opcode) and ws has already closed that socket with the matching code,
 * so at `error` level any client could flood the relay's logs. Such errors
 * are logged at `debug`, by code only; errors of the server itself stay at
 * `error`.
 */
export class RelayWsAdapter extends WsAdapter {
  private readonly socketLogger = new Logger('WebSocket');
  /** The servers this adapter made, so that a graceful shutdown can close their sockets with 1001. */
  readonly servers: WebSocketServer[] = [];

  override create(port: number, options?: Parameters<WsAdapter['create']>[1]): WebSocketServer {
    const server = super.create(port, options) as WebSocketServer;
    this.servers.push(server);
    return server;
  }

  /**
   * Nest binds every socket's `@SubscribeMessage` handlers through a chain of
   * RxJS streams (fromEvent, share, mergeMap, takeUntil), even when the
   * gateway has none: about 8 KB of heap per open socket, more than the
   * socket itself (the idle-connections benchmark: 13.4 KB per idle relay
   * socket with them, 5.6 KB without). The relay's gateway reads its frames
   * itself, so a socket without handlers gets no streams; a gateway with
   * handlers keeps Nest's binding.
   */
  override bindMessageHandlers(
    client: WebSocket,
    handlers: MessageMappingProperties[],
    transform: (data: unknown) => Observable<unknown>,
  ): void {
    if (handlers.length === 0) return;
    super.bindMessageHandlers(client, handlers, transform);
  }

  override bindErrorHandler(server: WebSocketServer): WebSocketServer {
    server.on('connection', (socket: WebSocket) =>
      socket.on('error', (error: Error & { code?: string }) =>
        this.socketLogger.debug(`A client broke the WebSocket protocol (${error.code ?? error.name}); its socket is closed`),
      ),
    );
    server.on('error', (error: Error) => this.socketLogger.error(error));
    return server;
  }
}
