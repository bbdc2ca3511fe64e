// Accounts for relay benchmarks, registered over HTTP as any client does
// (POST /v1/auth/register; the harness's relay hashes with the cheapest
// Argon2id, so a registration costs a few milliseconds).
import { randomBytes } from 'node:crypto';
import type { AuthResponse } from '@chat/protocol';

export interface RegisteredDevice {
  username: string;
  accountId: string;
  deviceId: number;
  accessToken: string;
}

export const BENCH_PASSWORD = 'bench-password-1';

export interface RegisterOptions {
  /** Requests in flight at once (default 8). */
  concurrency?: number;
  /** Username prefix, a-z 0-9 _ only, at most 16 characters (default 'b'). */
  prefix?: string;
  /** Called every `progressEvery` registrations (default 1,000). */
  onProgress?: (done: number) => void;
  progressEvery?: number;
}

/** Registers `count` accounts (device 1 of each), `concurrency` at a time, in order of their index. */
export async function registerAccounts(relayUrl: string, count: number, options: RegisterOptions = {}): Promise<RegisteredDevice[]> {
  // A run tag keeps the names unique when one relay's database outlives a run.
  const tag = randomBytes(3).toString('hex');
  const prefix = `${options.prefix ?? 'b'}_${tag}_`;
  const every = options.progressEvery ?? 1_000;
  const devices = new Array<RegisteredDevice>(count);
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < count) {
      const index = next++;
      devices[index] = await register(relayUrl, `${prefix}${index}`);
      done++;
      if (done % every === 0) options.onProgress?.(done);
    }
  };
  await Promise.all(Array.from({ length: Math.min(options.concurrency ?? 8, count) }, worker));
  return devices;
}

/** @throws Error naming the relay's answer when it is not 201 */
export async function register(relayUrl: string, username: string, password = BENCH_PASSWORD): Promise<RegisteredDevice> {
  const response = await fetch(`${relayUrl}/v1/auth/register`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username, password }),
  });
  const text = await response.text();
  if (response.status !== 201) throw new Error(`registering ${username}: ${response.status} ${text}`);
  const auth = JSON.parse(text) as AuthResponse;
  return { username: auth.username, accountId: auth.accountId, deviceId: auth.deviceId, accessToken: auth.accessToken };
}
