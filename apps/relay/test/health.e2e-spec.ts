import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { startChaosProxy, type ChaosProxy } from './support/chaos-proxy.js';
import { startRelayProcess, type RelayProcess } from './support/relay-process.js';
import { createScratchDatabase, type ScratchDatabase } from './support/scratch-database.js';
import { httpJson } from './support/test-relay.js';
import { until } from './support/wait.js';

// Issue 7, acceptance 3 (health): /health/ready turns 503 naming the
// dependency that is gone when the database (or Redis, with REDIS_URL) stops
// answering, and 200 again once it is back; /health/live stays 200 all along.
// The relay runs as a process whose database (a scratch Postgres database, or
// without DATABASE_URL a PGlite served on loopback) and Redis are reached
// through proxies that the spec cuts and restores.

interface HealthBody {
  status: 'ok' | 'error';
  info?: Record<string, { status: string }>;
  error?: Record<string, { status: string; message?: string }>;
  details: Record<string, { status: string; message?: string }>;
}

const redisUrl = process.env.REDIS_URL;

describe('health endpoints', () => {
  let database: ScratchDatabase;
  let databaseProxy: ChaosProxy;
  let redisProxy: ChaosProxy | undefined;
  let relay: RelayProcess;

  beforeAll(async () => {
    database = await createScratchDatabase();
    const url = new URL(database.url);
    databaseProxy = await startChaosProxy(Number(url.port), url.hostname);
    url.port = String(databaseProxy.port);
    const overrides: Record<string, string> = { DATABASE_URL: url.toString(), HEALTH_CHECK_TIMEOUT_MS: '2000' };
    if (redisUrl) {
      const redis = new URL(redisUrl);
      redisProxy = await startChaosProxy(Number(redis.port || 6379), redis.hostname);
      redis.port = String(redisProxy.port);
      overrides.REDIS_URL = redis.toString();
    }
    relay = await startRelayProcess(overrides);
    await relay.start();
  });

  afterAll(async () => {
    await relay?.close();
    await redisProxy?.close();
    await databaseProxy?.close();
    await database?.close();
  });

  const ready = () => httpJson<HealthBody>(relay, 'GET', '/health/ready');
  const live = () => httpJson<HealthBody>(relay, 'GET', '/health/live');

  it('is ready with every dependency up, and says which it checked', async () => {
    const { status, body } = await ready();
    expect(status).toBe(200);
    expect(body.status).toBe('ok');
    expect(body.details.database?.status).toBe('up');
    expect(body.details.shutdown?.status).toBe('up');
    if (redisUrl) expect(body.details.redis?.status).toBe('up');
    else expect(body.details.redis).toBeUndefined();
    expect((await live()).status).toBe(200);
  });

  it('turns not ready, naming the database, while the database is unreachable, and ready again once it is back', async () => {
    databaseProxy.cut();
    let answer = await ready();
    await until(async () => {
      answer = await ready();
      return answer.status === 503;
    }, "ready to report the database down");
    expect(answer.body.status).toBe('error');
    expect(answer.body.error?.database?.status).toBe('down');
    expect(answer.body.details.database?.status).toBe('down');
    if (redisUrl) expect(answer.body.details.redis?.status).toBe('up');
    // Liveness checks nothing external: a database outage must not get the relay restarted.
    expect((await live()).status).toBe(200);

    databaseProxy.restore();
    await until(async () => (await ready()).status === 200, 'ready to report the database up again');
    const { body } = await ready();
    expect(body.details.database?.status).toBe('up');
  });

  (redisUrl ? it : it.skip)('turns not ready, naming Redis, while Redis is unreachable, and ready again once it is back', async () => {
    redisProxy!.cut();
    let answer = await ready();
    await until(async () => {
      answer = await ready();
      return answer.status === 503;
    }, 'ready to report Redis down');
    expect(answer.body.error?.redis?.status).toBe('down');
    expect(answer.body.details.database?.status).toBe('up');

    redisProxy!.restore();
    await until(async () => (await ready()).status === 200, 'ready to report Redis up again', 20_000);
    expect((await ready()).body.details.redis?.status).toBe('up');
  });
});
