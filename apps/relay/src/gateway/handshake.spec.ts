import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { describe, expect, it } from '@jest/globals';
import { ExpressAdapter } from '@nestjs/platform-express';
import type { Express } from 'express';
import { clientAddressOfUpgrade, ConnectionsPerAddress } from './handshake.js';

/** What the counter touches of a TCP socket: `closed` and its 'close' event. */
const fakeSocket = (remoteAddress = '127.0.0.1') => {
  const socket = new EventEmitter() as EventEmitter & { closed: boolean; remoteAddress: string };
  socket.closed = false;
  socket.remoteAddress = remoteAddress;
  const close = () => {
    socket.closed = true;
    socket.emit('close');
  };
  return { socket: socket as unknown as Socket, close };
};

describe('ConnectionsPerAddress', () => {
  it('admits up to the limit per address, and one more once a connection of that address closes', () => {
    const connections = new ConnectionsPerAddress(2);
    const [a, b, c] = [fakeSocket(), fakeSocket(), fakeSocket()];
    expect(connections.admit('203.0.113.1', a.socket)).toBe(true);
    expect(connections.admit('203.0.113.1', b.socket)).toBe(true);
    expect(connections.admit('203.0.113.1', c.socket)).toBe(false);
    // Another address has a budget of its own.
    expect(connections.admit('198.51.100.1', c.socket)).toBe(true);
    a.close();
    expect(connections.countOf('203.0.113.1')).toBe(1);
    expect(connections.admit('203.0.113.1', fakeSocket().socket)).toBe(true);
    expect(connections.admit('203.0.113.1', fakeSocket().socket)).toBe(false);
  });

  it('does not count a refused connection, and forgets an address whose connections all closed', () => {
    const connections = new ConnectionsPerAddress(1);
    const first = fakeSocket();
    expect(connections.admit('203.0.113.2', first.socket)).toBe(true);
    const refused = fakeSocket();
    expect(connections.admit('203.0.113.2', refused.socket)).toBe(false);
    refused.close();
    expect(connections.countOf('203.0.113.2')).toBe(1);
    first.close();
    expect(connections.countOf('203.0.113.2')).toBe(0);
  });

  it('releases at once a socket that had closed before it was counted', () => {
    const connections = new ConnectionsPerAddress(1);
    const gone = fakeSocket();
    gone.close();
    expect(connections.admit('203.0.113.3', gone.socket)).toBe(true);
    expect(connections.countOf('203.0.113.3')).toBe(0);
  });
});

describe('clientAddressOfUpgrade', () => {
  const upgradeFrom = (remoteAddress: string, forwardedFor?: string) =>
    ({ headers: forwardedFor ? { 'x-forwarded-for': forwardedFor } : {}, socket: { remoteAddress } }) as unknown as IncomingMessage;
  const appTrusting = (trustProxy?: number | string) => {
    const app = new ExpressAdapter().getInstance<Express>();
    if (trustProxy !== undefined) app.set('trust proxy', trustProxy);
    return app;
  };

  it('is the TCP peer without TRUST_PROXY, whatever X-Forwarded-For says', () => {
    expect(clientAddressOfUpgrade(appTrusting(), upgradeFrom('192.0.2.10', '203.0.113.7'))).toBe('192.0.2.10');
  });

  it('is the forwarded client behind a trusted proxy, and the peer when the peer is not trusted', () => {
    const app = appTrusting('loopback');
    expect(clientAddressOfUpgrade(app, upgradeFrom('127.0.0.1', '203.0.113.7'))).toBe('203.0.113.7');
    expect(clientAddressOfUpgrade(app, upgradeFrom('192.0.2.10', '203.0.113.7'))).toBe('192.0.2.10');
  });

  it('takes only as many hops as TRUST_PROXY says, so a client cannot choose its address by prepending entries', () => {
    const app = appTrusting(1);
    expect(clientAddressOfUpgrade(app, upgradeFrom('127.0.0.1', '198.51.100.99, 203.0.113.7'))).toBe('203.0.113.7');
  });
});
