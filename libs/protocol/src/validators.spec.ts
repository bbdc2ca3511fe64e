import 'reflect-metadata';
import { plainToInstance } from 'class-transformer';
import { validateSync } from 'class-validator';
import { decodedBase64Length, jsonBoundExceeded } from './validators.js';
import { LoginRequest, RegisterRequest } from './auth.dto.js';
import { DeviceIdParam } from './devices.dto.js';
import { ListMessagesQuery } from './messages.dto.js';
import { UploadBackupRequest } from './backup.dto.js';
import { UploadKeysRequest } from './keys.dto.js';
import { ClientFrameType, SendFrame } from './frames.js';
import { EC_PUBLIC_KEY_BYTES, MAX_BACKUP_BYTES, MAX_HTTP_BODY_BYTES, MAX_JSON_DEPTH, MAX_JSON_VALUES, MAX_PREKEYS_PER_UPLOAD } from './limits.js';

const b64 = (bytes: number) => Buffer.alloc(bytes, 7).toString('base64');

describe('decodedBase64Length', () => {
  it.each([0, 1, 2, 3, 33, 64, 1569])('measures %i bytes', (n) => {
    expect(decodedBase64Length(b64(n))).toBe(n);
  });

  it.each(['abc', 'ab=c', 'YQ', '!!!!', 'YWJj\n', 'YW=='.replace('=', '*')])('rejects %j', (s) => {
    expect(decodedBase64Length(s)).toBe(-1);
  });
});

describe('jsonBoundExceeded', () => {
  const nested = (depth: number, open: string, close: string) => JSON.parse(`${open.repeat(depth)}1${close.repeat(depth)}`) as unknown;
  const depthExceeds = (value: unknown, maxDepth: number) => jsonBoundExceeded(value, maxDepth, Infinity) === 'depth';

  it.each([
    ['a scalar', 1, 0],
    ['{}', {}, 1],
    ['[[]]', [[]], 2],
    ['a send frame', { type: 'send', message: { messages: [{ deviceId: 1 }] } }, 4],
  ])('gives %s its depth', (_what, value, depth) => {
    expect(depthExceeds(value, depth)).toBe(false);
    if (depth > 0) expect(depthExceeds(value, depth - 1)).toBe(true);
  });

  it('accepts MAX_JSON_DEPTH levels and refuses one more, of arrays and of objects', () => {
    for (const [open, close] of [['[', ']'], ['{"a":', '}']]) {
      expect(jsonBoundExceeded(nested(MAX_JSON_DEPTH, open!, close!), MAX_JSON_DEPTH, MAX_JSON_VALUES)).toBeUndefined();
      expect(jsonBoundExceeded(nested(MAX_JSON_DEPTH + 1, open!, close!), MAX_JSON_DEPTH, MAX_JSON_VALUES)).toBe('depth');
    }
  });

  it('measures 100,000 levels without exhausting the stack', () => {
    expect(jsonBoundExceeded(nested(100_000, '[', ']'), MAX_JSON_DEPTH, MAX_JSON_VALUES)).toBe('depth');
  });

  it('counts every object, array and scalar: MAX_JSON_VALUES pass, one more does not', () => {
    const withValues = (count: number) => ({ messages: Array.from({ length: count - 2 }, () => 0) });
    expect(jsonBoundExceeded(withValues(MAX_JSON_VALUES), MAX_JSON_DEPTH, MAX_JSON_VALUES)).toBeUndefined();
    expect(jsonBoundExceeded(withValues(MAX_JSON_VALUES + 1), MAX_JSON_DEPTH, MAX_JSON_VALUES)).toBe('values');
    expect(jsonBoundExceeded({ messages: Array.from({ length: 150_000 }, () => ({})) }, MAX_JSON_DEPTH, MAX_JSON_VALUES)).toBe('values');
  });

  it('lets the largest key upload through', () => {
    const key = { keyId: 1, publicKey: b64(EC_PUBLIC_KEY_BYTES), signature: b64(64) };
    const upload = {
      identityKey: b64(EC_PUBLIC_KEY_BYTES),
      registrationId: 1,
      signedPreKey: key,
      kyberLastResortPreKey: key,
      preKeys: Array.from({ length: MAX_PREKEYS_PER_UPLOAD }, () => ({ keyId: 1, publicKey: key.publicKey })),
      kyberPreKeys: Array.from({ length: MAX_PREKEYS_PER_UPLOAD }, () => key),
      replaceOneTimePreKeys: false,
    };
    expect(jsonBoundExceeded(upload, MAX_JSON_DEPTH, MAX_JSON_VALUES)).toBeUndefined();
  });
});

describe('integers in paths and queries', () => {
  const deviceIdErrors = (deviceId: unknown) => validateSync(plainToInstance(DeviceIdParam, { deviceId }));
  const limitErrors = (limit: unknown) => validateSync(plainToInstance(ListMessagesQuery, { limit }));

  it.each(['1', '7', '127', '007'])('reads %j as a decimal integer', (text) => {
    expect(plainToInstance(DeviceIdParam, { deviceId: text }).deviceId).toBe(Number(text));
    expect(deviceIdErrors(text)).toHaveLength(0);
  });

  it.each(['0x1', ' 1', '1 ', '1.0', '1e0', '+1', '-1', '', '0b1', '1_0', '９'])('refuses %j, which Number() would read as a number', (text) => {
    expect(deviceIdErrors(text)).toHaveLength(1);
    expect(limitErrors(text)).toHaveLength(1);
  });

  it('leaves an absent limit absent and refuses a repeated one', () => {
    expect(limitErrors(undefined)).toHaveLength(0);
    expect(limitErrors(['1', '2'])).toHaveLength(1);
  });
});

describe('LoginRequest', () => {
  it('refuses a username with NUL, which Postgres cannot compare (an error, not an unknown user)', () => {
    expect(validateSync(plainToInstance(LoginRequest, { username: 'bob\u0000', password: 'x' }))).toHaveLength(1);
    expect(validateSync(plainToInstance(LoginRequest, { username: 'Bob', password: 'x' }))).toHaveLength(0);
  });
});

describe('RegisterRequest', () => {
  const check = (plain: object) => validateSync(plainToInstance(RegisterRequest, plain));

  it('lower-cases the username before checking it', () => {
    const dto = plainToInstance(RegisterRequest, { username: 'Alice.B_1', password: 'correct horse' });
    expect(dto.username).toBe('alice.b_1');
    expect(validateSync(dto)).toHaveLength(0);
  });

  it.each(['ab', 'a'.repeat(33), 'al ice', 'alïce', 'al-ice'])('refuses username %j', (username) => {
    expect(check({ username, password: 'correct horse' }).map((e) => e.property)).toEqual(['username']);
  });

  it('refuses a short password and a non-string one', () => {
    expect(check({ username: 'alice', password: 'short' }).map((e) => e.property)).toEqual(['password']);
    expect(check({ username: 'alice', password: 12345678 }).map((e) => e.property)).toEqual(['password']);
  });
});

describe('UploadKeysRequest', () => {
  const base = { identityKey: b64(EC_PUBLIC_KEY_BYTES), registrationId: 42 };

  it('accepts a batch of the maximum size and refuses one more', () => {
    const preKeys = (n: number) => Array.from({ length: n }, (_, keyId) => ({ keyId, publicKey: b64(33) }));
    const ok = plainToInstance(UploadKeysRequest, { ...base, preKeys: preKeys(MAX_PREKEYS_PER_UPLOAD) });
    const tooMany = plainToInstance(UploadKeysRequest, { ...base, preKeys: preKeys(MAX_PREKEYS_PER_UPLOAD + 1) });
    expect(validateSync(ok)).toHaveLength(0);
    expect(validateSync(tooMany).map((e) => e.property)).toEqual(['preKeys']);
  });

  it('refuses a public key of the wrong length inside a nested prekey', () => {
    const dto = plainToInstance(UploadKeysRequest, {
      ...base,
      signedPreKey: { keyId: 1, publicKey: b64(32), signature: b64(64) },
    });
    const [error] = validateSync(dto);
    expect(error?.property).toBe('signedPreKey');
    expect(error?.children?.[0]?.property).toBe('publicKey');
  });
});

describe('nested objects', () => {
  it.each([[[]], [[{}]], ['text'], [7]])('refuse %j where an object is expected, in a send frame and in a key upload', (value) => {
    const frame = plainToInstance(SendFrame, { type: ClientFrameType.Send, requestId: 'r1', message: value });
    expect(validateSync(frame).map((e) => e.property)).toEqual(['message']);
    const keys = plainToInstance(UploadKeysRequest, { identityKey: b64(EC_PUBLIC_KEY_BYTES), registrationId: 42, signedPreKey: value });
    expect(validateSync(keys).map((e) => e.property)).toEqual(['signedPreKey']);
  });
});

describe('UploadBackupRequest', () => {
  const check = (blob: unknown) => validateSync(plainToInstance(UploadBackupRequest, { blob })).map((e) => e.property);

  it('accepts 1 to MAX_BACKUP_BYTES bytes and nothing else', () => {
    expect(check(b64(1))).toEqual([]);
    expect(check(b64(MAX_BACKUP_BYTES))).toEqual([]);
    expect(check(b64(MAX_BACKUP_BYTES + 1))).toEqual(['blob']);
    expect(check('')).toEqual(['blob']);
    expect(check(42)).toEqual(['blob']);
  });

  it('fits a largest backup in one HTTP body', () => {
    expect(Buffer.byteLength(JSON.stringify({ blob: b64(MAX_BACKUP_BYTES) }))).toBeLessThanOrEqual(MAX_HTTP_BODY_BYTES);
  });
});
