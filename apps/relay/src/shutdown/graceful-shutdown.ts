import type { Server } from 'node:http';
import { Logger } from '@nestjs/common';
import { ExpressAdapter } from '@nestjs/platform-express';
import type { NextFunction, Request, Response } from 'express';
import type { WebSocketServer } from 'ws';
import { CloseCode } from '@chat/protocol';
import type { ShutdownState } from './shutdown-state.js';

/** The close reason sent with 1001. */
export const SHUTDOWN_CLOSE_REASON = 'SHUTTING_DOWN';

/**
 * Express, with a drain run first when the application closes: Nest calls
 * `beforeClose` before any module's destroy hook, so requests, frames and
 * their database writes finish while every service is still up.
 */
export class DrainingExpressAdapter extends ExpressAdapter {
  drain?: () => Promise<void>;

  override async beforeClose(): Promise<void> {
    await this.drain?.();
    super.beforeClose();
  }
}

/** Counts each HTTP request as in-flight work from its start until its response is finished or its connection lost. */
export function countInFlightRequests(state: ShutdownState) {
  return (_request: Request, response: Response, next: NextFunction): void => {
    state.begin();
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      state.end();
    };
    response.once('finish', end).once('close', end);
    next();
  };
}

export interface DrainTargets {
  state: ShutdownState;
  httpServer: Server;
  /** The WebSocket servers whose sockets are closed with 1001. */
  webSocketServers: () => readonly WebSocketServer[];
  timeoutMs: number;
}

/**
 * The graceful part of a shutdown, in order:
 * 1. readiness turns down and the HTTP server stops listening (no new HTTP
 *    or WebSocket connection; idle keep-alive connections are closed);
 *    frames arriving on open sockets from now on are not read;
 * 2. in-flight HTTP requests and WebSocket frames finish, with their
 *    database writes and their answers (`sent` included);
 * 3. every socket is closed with 1001 `SHUTTING_DOWN` and its closing
 *    handshake is awaited; clients reconnect, elsewhere or to the restarted
 *    relay, and resend what was not answered (the same `id`, so the relay
 *    stores it once);
 * 4. the remaining HTTP connections are closed.
 * Steps 2 and 3 wait at most `timeoutMs` together; what is left then is cut.
 * Nest's own shutdown (destroy hooks, database disconnect) follows.
 */
export async function drain(targets: DrainTargets): Promise<void> {
  const logger = new Logger('Shutdown');
  const { state, httpServer } = targets;
  const deadline = Date.now() + targets.timeoutMs;
  const beforeDeadline = async (what: Promise<unknown>): Promise<boolean> => {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), Math.max(deadline - Date.now(), 0));
    });
    try {
      return await Promise.race([what.then(() => true), timedOut]);
    } finally {
      clearTimeout(timer);
    }
  };

  state.startDraining();
  logger.log('Shutting down: no new connections; finishing in-flight requests and frames');
  if (httpServer.listening) httpServer.close();
  httpServer.closeIdleConnections();

  if (!(await beforeDeadline(state.idle()))) {
    logger.warn(`Shutdown timeout: ${state.inFlightCount} requests or frames still running are cut`);
  }

  const sockets = targets.webSocketServers().flatMap((server) => [...server.clients]);
  const closed = sockets.map(
    (socket) =>
      new Promise<void>((resolve) => {
        if (socket.readyState === socket.CLOSED) return resolve();
        socket.once('close', () => resolve());
        socket.close(CloseCode.GoingAway, SHUTDOWN_CLOSE_REASON);
      }),
  );
  if (!(await beforeDeadline(Promise.all(closed)))) {
    logger.warn('Shutdown timeout: sockets that did not finish their closing handshake are terminated');
  }
  for (const socket of sockets) if (socket.readyState !== socket.CLOSED) socket.terminate();
  httpServer.closeAllConnections();
  logger.log(`Drained: ${sockets.length} sockets closed with 1001`);
}
