import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { ServerFrameType } from '@chat/protocol';
import { registerUser, startTestRelay, uniqueUsername, type TestRelay } from './support/test-relay.js';
import { connectWs, waitForFrame } from './support/ws-client.js';

/**
 * The embedded database is one PGlite session behind a socket server, so a
 * new pool connection shares the session (and its prepared statements)
 * with the one it replaces. On Postgres the same steps pass trivially.
 */
describe('the database connection is replaced', () => {
  let relay: TestRelay;
  beforeAll(async () => {
    relay = await startTestRelay();
  });
  afterAll(async () => {
    await relay.close();
  });

  const connectsAndDrains = async (token: string) => {
    const client = await connectWs(relay.wsUrl, token);
    await waitForFrame(client, (frame) => frame.type === ServerFrameType.QueueEmpty);
    client.socket.close();
  };

  it("keeps serving the relay's named statements after the pool's connection is destroyed and opened again", async () => {
    const user = await registerUser(relay, uniqueUsername('pool'));
    await connectsAndDrains(user.accessToken); // prepares the queue's named statement on the first connection
    const first = await relay.prisma.pool.connect();
    first.release(true); // destroyed, as pg's idle timeout or a broken socket would
    await connectsAndDrains(user.accessToken);
  });

  it('does not let the embedded connection time out while idle', () => {
    const idleTimeout = relay.prisma.pool.options.idleTimeoutMillis;
    if (relay.prisma.database.mode === 'embedded') expect(idleTimeout).toBe(0);
    else expect(idleTimeout).not.toBe(0);
  });
});
