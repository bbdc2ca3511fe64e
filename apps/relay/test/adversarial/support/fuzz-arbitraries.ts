/**
 * fast-check arbitraries for the adversarial fuzz specs: the inputs a hostile
 * client puts in HTTP bodies, paths, queries, headers and WebSocket frames.
 *
 * Values are built as plain JSON data and written out by `toJsonText`, which
 * also writes what `JSON.stringify` cannot: number literals as an attacker
 * spells them (`1e309`, `-0`, `9007199254740993`) and raw fragments (JSON
 * nested ten thousand deep) via `RawJson`. Keys such as `__proto__` are own
 * properties (`withOwnKey`), so they reach the wire.
 *
 * Every property runs with `FUZZ_SEED` (env `FUZZ_SEED` to replay another
 * run); fast-check prints the seed and the counterexample of a failure.
 */
import fc from 'fast-check';
import { MAX_HTTP_BODY_BYTES, REQUEST_ID_MAX_LENGTH } from '@chat/protocol';
import { length } from 'class-validator';

/** The seed of every fuzz property; set FUZZ_SEED to replay another. */
export const FUZZ_SEED = Number(process.env.FUZZ_SEED ?? 20261126);

/** fast-check parameters: a fixed seed, and a failure reported with its seed and path. */
export function fuzzParameters(numRuns: number): fc.Parameters<unknown> {
  return { seed: FUZZ_SEED, numRuns, verbose: fc.VerbosityLevel.None };
}

/** A fragment written into the JSON text as it is. */
export class RawJson {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text.length > 80 ? `RawJson(${this.text.slice(0, 40)}…${this.text.length} chars)` : `RawJson(${this.text})`;
  }
}

/** JSON text of `value`, with `RawJson` fragments written verbatim (numbers as spelt, deep nesting). */
export function toJsonText(value: unknown): string {
  if (value instanceof RawJson) return value.text;
  if (Array.isArray(value)) return `[${value.map((item) => (item === undefined ? 'null' : toJsonText(item))).join(',')}]`;
  if (typeof value === 'object' && value !== null) {
    const fields = Object.keys(value)
      .filter((key) => (value as Record<string, unknown>)[key] !== undefined)
      .map((key) => `${JSON.stringify(key)}:${toJsonText((value as Record<string, unknown>)[key])}`);
    return `{${fields.join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/** `target` with an own, enumerable `key` (also `__proto__`, which plain assignment would turn into a prototype). */
export function withOwnKey(target: Record<string, unknown>, key: string, value: unknown): Record<string, unknown> {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
  return target;
}

/** A deep copy of plain JSON data that keeps `RawJson` fragments and own `__proto__` keys. */
export function cloneJson<T>(value: T): T {
  if (value instanceof RawJson || typeof value !== 'object' || value === null) return value;
  if (Array.isArray(value)) return value.map(cloneJson) as T;
  const copy: Record<string, unknown> = {};
  for (const key of Object.keys(value)) withOwnKey(copy, key, cloneJson((value as Record<string, unknown>)[key]));
  return copy as T;
}

// ---------------------------------------------------------------- scalars

/** Numbers that break naive integer checks or JSON round trips. */
export const HOSTILE_NUMBER_LITERALS = [
  '1e309',
  '-1e309',
  '-0',
  '9007199254740993',
  '-9007199254740993',
  '123456789012345678901234567890',
  '1e21',
  '5e-324',
  '0.5',
  '1.0000000000000002',
  '-1',
  '0',
  '128',
  '16384',
  '16777216',
  '4294967296',
  '2147483648',
] as const;

export const hostileNumber: fc.Arbitrary<RawJson> = fc.oneof(
  fc.constantFrom(...HOSTILE_NUMBER_LITERALS).map((text) => new RawJson(text)),
  fc.double().map((n) => new RawJson(Number.isFinite(n) ? String(n) : n > 0 ? '1e999' : '-1e999')),
  fc.bigInt().map((n) => new RawJson(String(n))),
);

/** Strings aimed at usernames, passwords, ids and tokens: NUL, bidi controls, homoglyphs, lone surrogates, injections, lengths at and past the limits. */
export const NASTY_STRINGS = [
  '',
  ' ',
  '\u0000',
  'bob\u0000',
  'a\u0000\u0000b',
  '\u202Ebob',
  'bob\u200B',
  'BOB',
  'ВОБ',
  'bob\uFE0F',
  '😀'.repeat(40),
  '\uFE0F'.repeat(70),
  '\uD800',
  'ab\uDC00cd',
  '\r\n',
  '../../etc/passwd',
  '%00',
  "'; DROP TABLE accounts; --",
  '${jndi:ldap://relay}',
  '__proto__',
  'constructor',
  'null',
  'NaN',
  'ab',
  'a'.repeat(33),
  'p'.repeat(257),
  'r'.repeat(129),
  'x'.repeat(70_000),
] as const;

export const hostileString: fc.Arbitrary<string> = fc.oneof(
  { arbitrary: fc.constantFrom(...NASTY_STRINGS), weight: 3 },
  { arbitrary: fc.string({ unit: 'binary', maxLength: 80 }), weight: 2 },
  { arbitrary: fc.string({ unit: 'grapheme', maxLength: 40 }), weight: 1 },
  { arbitrary: fc.string({ maxLength: 40 }), weight: 1 },
);

// ---------------------------------------------------------------- bytes and keys

const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64');
const bytesOf = (length: number) => fc.uint8Array({ minLength: length, maxLength: length });

/** Byte lengths at and around every size the protocol names (access key 16, EC key 33, signature 64, Kyber key 1569). */
const INTERESTING_BYTE_LENGTHS = [0, 1, 15, 16, 17, 31, 32, 33, 34, 63, 64, 65, 1568, 1569, 1570] as const;

/** Valid base64 of a length at or around the protocol's sizes. */
export const base64OfInterestingLength: fc.Arbitrary<string> = fc
  .constantFrom(...INTERESTING_BYTE_LENGTHS)
  .chain((length) => bytesOf(length))
  .map(b64);

/** 33 bytes that are not a Curve25519 public key (a type byte other than 0x05), and keys of the wrong type or length. */
export const nonKey: fc.Arbitrary<string> = fc.oneof(
  fc.tuple(fc.constantFrom(0x00, 0x04, 0x06, 0x08, 0xff), bytesOf(32)).map(([type, rest]) => b64(Uint8Array.from([type, ...rest]))),
  fc.tuple(fc.constantFrom(31, 32, 34, 65), fc.constant(0x05)).chain(([length, type]) => bytesOf(length - 1).map((rest) => b64(Uint8Array.from([type, ...rest])))),
  bytesOf(1568).map((rest) => b64(Uint8Array.from([0x05, ...rest]))),
  bytesOf(32).map((rest) => b64(Uint8Array.from([0x08, ...rest]))),
);

/** Strings that are not padded standard base64: base64url, missing or extra padding, whitespace, foreign characters, data URLs. */
export const invalidBase64: fc.Arbitrary<string> = fc.oneof(
  bytesOf(33).map((bytes) => Buffer.from(bytes).toString('base64url')),
  fc.constantFrom(16, 32, 34).chain((length) => bytesOf(length).map((bytes) => b64(bytes).replace(/=+$/, ''))),
  bytesOf(33).map((bytes) => `${b64(bytes)}=`),
  bytesOf(33).map((bytes) => `${b64(bytes)}==`),
  fc.tuple(bytesOf(33), fc.constantFrom(' ', '\n', '\t', '\u0000', '*', '.', '-', '_', 'é', '=', '%3D')).map(([bytes, junk]) => {
    const text = b64(bytes);
    return `${text.slice(0, 20)}${junk}${text.slice(20)}`;
  }),
  bytesOf(33).map((bytes) => `data:application/octet-stream;base64,${b64(bytes)}`),
  fc.constantFrom('=', '==', '====', 'A', 'AA', 'AAA', 'A===', '////', '++++'.repeat(1000)),
);

/** Anything a byte field could be sent: valid base64 of the wrong size, non-keys, invalid base64. */
export const hostileBytes: fc.Arbitrary<string> = fc.oneof(base64OfInterestingLength, nonKey, invalidBase64);

// ---------------------------------------------------------------- structure

export type NestingShape = 'array' | 'object' | 'mixed';

/** JSON nested `depth` deep, as text (building it as data would overflow the stack of whoever walks it, which is the point). */
export function deeplyNested(depth: number, shape: NestingShape): RawJson {
  if (shape === 'array') return new RawJson(`${'['.repeat(depth)}1${']'.repeat(depth)}`);
  if (shape === 'object') return new RawJson(`${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`);
  const open: string[] = [];
  const close: string[] = [];
  for (let level = 0; level < depth; level++) {
    open.push(level % 2 === 0 ? '[' : '{"a":');
    close.push(level % 2 === 0 ? ']' : '}');
  }
  return new RawJson(`${open.join('')}1${close.reverse().join('')}`);
}

/** Depths past any real body's (about 4) up to what fits in the body limit. */
export const NESTING_DEPTHS = [33, 200, 2_000, 10_000, 50_000] as const;

export const deepJson: fc.Arbitrary<RawJson> = fc
  .tuple(fc.constantFrom(...NESTING_DEPTHS), fc.constantFrom<NestingShape>('array', 'object', 'mixed'))
  .map(([depth, shape]) => deeplyNested(depth, shape));

/** Arrays far past every `ArrayMaxSize` (16 devices, 100 prekeys). */
export const oversizedArray: fc.Arbitrary<unknown[]> = fc
  .tuple(fc.constantFrom(17, 101, 5_000), fc.constantFrom<unknown>(1, 'x', {}, null, []))
  .map(([count, item]) => Array.from({ length: count }, () => cloneJson(item)));

/** Keys that walk a prototype chain or shadow built-ins. */
export const PROTOTYPE_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf'] as const;

/** Any value of the wrong kind for a field: strings, bytes, numbers, other JSON types, nesting, oversize. */
export const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  { arbitrary: hostileString, weight: 3 },
  { arbitrary: hostileBytes, weight: 3 },
  { arbitrary: hostileNumber, weight: 3 },
  { arbitrary: fc.constantFrom<unknown>(true, false, null, [], {}, [null], { length: 1 }), weight: 2 },
  { arbitrary: fc.jsonValue({ maxDepth: 3 }), weight: 2 },
  { arbitrary: deepJson, weight: 1 },
  { arbitrary: oversizedArray, weight: 1 },
  {
    arbitrary: fc.tuple(fc.constantFrom(...PROTOTYPE_KEYS), fc.jsonValue({ maxDepth: 2 })).map(([key, value]) => withOwnKey({}, key, value)),
    weight: 1,
  },
);

// ---------------------------------------------------------------- schemas (OpenAPI components)

export interface JsonSchema {
  type?: string;
  format?: string;
  pattern?: string;
  minimum?: number;
  maximum?: number;
  minLength?: number;
  maxLength?: number;
  minItems?: number;
  maxItems?: number;
  items?: JsonSchema;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  $ref?: string;
}

export type Schemas = Record<string, JsonSchema>;

function resolve(schema: JsonSchema, schemas: Schemas): JsonSchema {
  if (!schema.$ref) return schema;
  const name = schema.$ref.replace('#/components/schemas/', '');
  const target = schemas[name];
  if (!target) throw new Error(`the document has no schema ${name}`);
  return target;
}

/**
 * A value shaped by `schema`, mostly inside its bounds: the starting point
 * for mutations that get past the first checks. Strings without a pattern or
 * format are the protocol's byte fields (base64), so they get base64.
 */
export function plausibleValue(schema: JsonSchema, schemas: Schemas): fc.Arbitrary<unknown> {
  const resolved = resolve(schema, schemas);
  switch (resolved.type) {
    case 'object': {
      const properties = resolved.properties ?? {};
      const shape: Record<string, fc.Arbitrary<unknown>> = {};
      for (const [name, property] of Object.entries(properties)) shape[name] = plausibleValue(property, schemas);
      return fc.record(shape, { requiredKeys: (resolved.required ?? []).filter((name) => name in properties) });
    }
    case 'array':
      return fc.array(plausibleValue(resolved.items ?? {}, schemas), {
        minLength: resolved.minItems ?? 0,
        maxLength: Math.max(resolved.minItems ?? 0, Math.min(resolved.maxItems ?? 3, 3)),
      });
    case 'integer':
      return fc.integer({ min: resolved.minimum ?? -(2 ** 31), max: resolved.maximum ?? 2 ** 31 - 1 });
    case 'number':
      return fc.double({ noNaN: true, noDefaultInfinity: true });
    case 'boolean':
      return fc.boolean();
    case 'string':
      if (resolved.pattern) return fc.stringMatching(new RegExp(resolved.pattern));
      if (resolved.format === 'uuid') return fc.uuid();
      if (resolved.minLength !== undefined || resolved.maxLength !== undefined) {
        return fc.string({ minLength: resolved.minLength ?? 0, maxLength: Math.min(resolved.maxLength ?? 64, 64) });
      }
      return fc.constantFrom(1, 16, 32, 33, 64, 200).chain((length) => bytesOf(length)).map(b64);
    default:
      return fc.jsonValue({ maxDepth: 2 });
  }
}

// ---------------------------------------------------------------- mutations

type Path = Array<string | number>;

/** Every place in `value` a mutation can hit: the value itself, each container's children. */
function pathsOf(value: unknown, prefix: Path = []): Path[] {
  const paths: Path[] = [prefix];
  if (value instanceof RawJson || typeof value !== 'object' || value === null) return paths;
  if (Array.isArray(value)) value.forEach((item, index) => paths.push(...pathsOf(item, [...prefix, index])));
  else for (const key of Object.keys(value)) paths.push(...pathsOf((value as Record<string, unknown>)[key], [...prefix, key]));
  return paths;
}

export type Mutation =
  | { kind: 'replace'; value: unknown }
  | { kind: 'delete' }
  | { kind: 'extra-key'; key: string; value: unknown };

export const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { arbitrary: hostileValue.map((value) => ({ kind: 'replace' as const, value })), weight: 6 },
  { arbitrary: fc.constant({ kind: 'delete' as const }), weight: 1 },
  {
    arbitrary: fc
      .tuple(fc.oneof(fc.constantFrom(...PROTOTYPE_KEYS), fc.string({ maxLength: 12 })), hostileValue)
      .map(([key, value]) => ({ kind: 'extra-key' as const, key, value })),
    weight: 1,
  },
);

/** `base` with `mutation` applied at its `pick`-th place (modulo their count); `base` itself is not changed. */
export function mutate(base: unknown, pick: number, change: Mutation): unknown {
  const copy = cloneJson(base);
  const paths = pathsOf(copy);
  const path = paths[pick % paths.length]!;
  if (path.length === 0) {
    if (change.kind === 'replace') return change.value;
    if (change.kind === 'delete') return undefined;
    return typeof copy === 'object' && copy !== null && !Array.isArray(copy) && !(copy instanceof RawJson)
      ? withOwnKey(copy as Record<string, unknown>, change.key, change.value)
      : [copy, change.value];
  }
  const parent = path.slice(0, -1).reduce<unknown>((node, key) => (node as Record<string | number, unknown>)[key], copy) as Record<string | number, unknown>;
  const last = path[path.length - 1]!;
  const target = parent[last];
  if (change.kind === 'replace') withOwnKey(parent as Record<string, unknown>, String(last), change.value);
  else if (change.kind === 'delete') {
    if (Array.isArray(parent)) parent.splice(last as number, 1);
    else delete parent[last];
  } else if (typeof target === 'object' && target !== null && !Array.isArray(target) && !(target instanceof RawJson)) {
    withOwnKey(target as Record<string, unknown>, change.key, change.value);
  } else {
    withOwnKey(parent as Record<string, unknown>, change.key, change.value);
  }
  return copy;
}

/** `base` with one hostile change somewhere in it. */
export function mutated(base: fc.Arbitrary<unknown>): fc.Arbitrary<unknown> {
  return fc.tuple(base, fc.nat(), mutation).map(([value, pick, change]) => mutate(value, pick, change));
}

/** `base` with a wrong-typed or hostile value in one of its byte fields, if it has any (else anywhere). */
export function withHostileBytes(base: fc.Arbitrary<unknown>, isByteField: (path: string) => boolean): fc.Arbitrary<unknown> {
  return fc.tuple(base, fc.nat(), fc.oneof(hostileBytes, nonKey, invalidBase64)).map(([value, pick, bytes]) => {
    const copy = cloneJson(value);
    const paths = pathsOf(copy).filter((path) => path.length > 0 && isByteField(path.filter((key) => typeof key === 'string').join('.')));
    if (paths.length === 0) return mutate(copy, pick, { kind: 'replace', value: bytes });
    const path = paths[pick % paths.length]!;
    const parent = path.slice(0, -1).reduce<unknown>((node, key) => (node as Record<string | number, unknown>)[key], copy) as Record<string, unknown>;
    parent[String(path[path.length - 1])] = bytes;
    return copy;
  });
}

// ---------------------------------------------------------------- whole bodies and frames

/** A request body as bytes on the wire, and what kind of attack it is. */
export interface FuzzBody {
  kind: 'mutated' | 'random-json' | 'truncated' | 'deep' | 'bytes' | 'empty' | 'oversized';
  text: string | Uint8Array<ArrayBuffer>;
}

/** Every kind of body: one hostile change to a plausible one, random JSON, truncated JSON, deep nesting, raw bytes, nothing, too much. */
export function hostileBody(base: fc.Arbitrary<unknown>): fc.Arbitrary<FuzzBody> {
  return fc.oneof(
    { arbitrary: mutated(base).map((value): FuzzBody => ({ kind: 'mutated', text: value === undefined ? '' : toJsonText(value) })), weight: 8 },
    { arbitrary: fc.jsonValue().map((value): FuzzBody => ({ kind: 'random-json', text: JSON.stringify(value) })), weight: 2 },
    {
      arbitrary: fc.tuple(base, fc.nat()).map(([value, cut]): FuzzBody => {
        const text = toJsonText(value);
        return { kind: 'truncated', text: text.slice(0, cut % Math.max(text.length, 1)) };
      }),
      weight: 2,
    },
    { arbitrary: deepJson.map((raw): FuzzBody => ({ kind: 'deep', text: raw.text })), weight: 1 },
    { arbitrary: fc.uint8Array({ maxLength: 200 }).map((bytes): FuzzBody => ({ kind: 'bytes', text: bytes })), weight: 1 },
    { arbitrary: fc.constantFrom('', ' ', 'null', '""', '0', '[]', '{}').map((text): FuzzBody => ({ kind: 'empty', text })), weight: 1 },
    {
      arbitrary: fc.constant(null).map((): FuzzBody => ({ kind: 'oversized', text: `{"blob":"${'A'.repeat(MAX_HTTP_BODY_BYTES)}"}` })),
      weight: 1,
    },
  );
}

/**
 * What the protocol reads as a frame's `requestId`: the `SendFrame` DTO's
 * rule (a string of 1 to 64 characters, class-validator's `@Length`), so an
 * answer to any frame that carries such a requestId must echo it.
 */
export function readableRequestId(frame: unknown): string | undefined {
  if (typeof frame !== 'object' || frame === null || Array.isArray(frame)) return undefined;
  const requestId = (frame as { requestId?: unknown }).requestId;
  return typeof requestId === 'string' && length(requestId, 1, REQUEST_ID_MAX_LENGTH) ? requestId : undefined;
}

/** requestIds a client may abuse: empty, too long, wide characters, NUL, other JSON types. */
export const hostileRequestId: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom<unknown>('', 'x'.repeat(64), 'x'.repeat(65), '😀'.repeat(40), '😀'.repeat(64), '\u0000', 'a\u0000b', '\uFE0F', ' ', 7, -0, null, true, [], {}, ['r']),
  hostileString,
  hostileNumber,
  fc.string({ minLength: 1, maxLength: 64 }),
);

/** A WebSocket frame as sent: text or binary, and what kind of attack it is. */
export interface FuzzFrame {
  kind: string;
  data: string | Uint8Array<ArrayBuffer>;
  binary: boolean;
}

const text = (kind: string) => (data: string): FuzzFrame => ({ kind, data, binary: false });

/**
 * Every kind of hostile frame: random text and bytes, random JSON, truncated
 * and mutated valid `send`/`ack` frames, unknown types, requestId abuse,
 * invalid base64 ciphertexts, deep nesting, hostile numbers.
 */
export function hostileFrame(validSend: fc.Arbitrary<unknown>, validAck: fc.Arbitrary<unknown>): fc.Arbitrary<FuzzFrame> {
  const valid = fc.oneof(validSend, validAck);
  const withKey = (base: fc.Arbitrary<unknown>, key: string, value: fc.Arbitrary<unknown>) =>
    fc.tuple(base, value).map(([frame, replacement]) => toJsonText(withOwnKey(cloneJson(frame) as Record<string, unknown>, key, replacement)));
  return fc.oneof(
    { arbitrary: fc.string({ unit: 'grapheme', maxLength: 60 }).map(text('random text')), weight: 1 },
    { arbitrary: fc.uint8Array({ maxLength: 120 }).map((data): FuzzFrame => ({ kind: 'random bytes', data, binary: true })), weight: 1 },
    { arbitrary: fc.jsonValue({ maxDepth: 3 }).map((value) => text('random JSON')(JSON.stringify(value))), weight: 1 },
    {
      arbitrary: fc.tuple(valid, fc.nat()).map(([frame, cut]) => {
        const whole = toJsonText(frame);
        return text('truncated')(whole.slice(0, cut % whole.length));
      }),
      weight: 2,
    },
    { arbitrary: mutated(valid).map((frame) => text('mutated')(frame === undefined ? '' : toJsonText(frame))), weight: 4 },
    { arbitrary: withKey(validSend, 'requestId', hostileRequestId).map(text('requestId abuse')), weight: 2 },
    {
      arbitrary: fc
        .tuple(
          fc.oneof(fc.constantFrom<unknown>('subscribe', 'SEND', 'Send', ' send', 'send ', 'ack\u0000', 'message', 'sent', 'error', '', null, 1, ['send'], { send: 1 }), fc.string()),
          hostileRequestId,
        )
        .map(([type, requestId]) => text('unknown type')(toJsonText({ type, requestId }))),
      weight: 2,
    },
    {
      arbitrary: withHostileBytes(validSend, (path) => /ciphertext$/.test(path)).map((frame) => text('bad ciphertext')(toJsonText(frame))),
      weight: 2,
    },
    { arbitrary: fc.tuple(validSend, hostileNumber, fc.nat()).map(([frame, number, pick]) => text('hostile number')(toJsonText(replaceNumber(frame, pick, number)))), weight: 2 },
    { arbitrary: withKey(validSend, 'message', deepJson).map(text('deep message')), weight: 1 },
    { arbitrary: deepJson.map((raw) => text('deep frame')(raw.text)), weight: 1 },
    {
      arbitrary: fc.tuple(valid, fc.boolean()).map(([frame, asBytes]): FuzzFrame => {
        const whole = toJsonText(frame);
        return asBytes ? { kind: 'valid as binary', data: new Uint8Array(Buffer.from(whole)), binary: true } : text('valid')(whole);
      }),
      weight: 1,
    },
  );
}

/** `value` with its `pick`-th number (modulo their count) replaced by `number`. */
function replaceNumber(value: unknown, pick: number, number: RawJson): unknown {
  const copy = cloneJson(value);
  const places = pathsOf(copy).filter((path) => path.length > 0 && typeof path.reduce<unknown>((node, key) => (node as Record<string | number, unknown>)[key], copy) === 'number');
  if (places.length === 0) return copy;
  const path = places[pick % places.length]!;
  const parent = path.slice(0, -1).reduce<unknown>((node, key) => (node as Record<string | number, unknown>)[key], copy) as Record<string, unknown>;
  parent[String(path[path.length - 1])] = number;
  return copy;
}
