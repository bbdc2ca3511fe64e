/**
 * Fuzzing every HTTP route the relay documents (issue #10, "Fuzzing"): a
 * hostile client sends random, truncated, wrongly typed, deeply nested and
 * oversized bodies, invalid base64 and non-keys, hostile numbers and strings,
 * garbage paths, queries and headers, with and without a token.
 *
 * The routes come from the relay's own OpenAPI document (GET /v1/openapi.json),
 * so a route added later is fuzzed too. For every answer: never a 5xx; every
 * 4xx is exactly an `ErrorBody` whose `code` is a protocol `ErrorCode` answered
 * with the status HTTP_STATUS_OF gives it. After each property a well-behaved
 * client still registers, sends and receives, and the relay logged no error
 * (an INTERNAL answer, or a failure anywhere, is logged at `error`).
 *
 * A crash shows as well: the relay runs in this process, and Jest fails the
 * running test on an unhandled rejection or uncaught exception (Jest's
 * sandboxed `process` does not see those events itself, so the spec does not
 * listen for them).
 */
import { request as httpRequest } from 'node:http';
import { randomBytes } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { afterAll, afterEach, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { Logger } from '@nestjs/common';
import fc from 'fast-check';
import { EnvelopeType, ErrorCode, MAX_HTTP_BODY_BYTES, MAX_JSON_VALUES, UNIDENTIFIED_ACCESS_KEY_HEADER, type AuthResponse } from '@chat/protocol';
import { HTTP_STATUS_OF } from '../../src/common/relay.exception.js';
import { OPENAPI_JSON_PATH } from '../../src/openapi/openapi.js';
import { DeviceKeys } from '../support/libsignal-keys.js';
import { httpJson, registerKeyedUser, startTestRelay, uniqueUsername, type TestRelay } from '../support/test-relay.js';
import {
  deeplyNested,
  FUZZ_SEED,
  fuzzParameters,
  hostileBody,
  hostileNumber,
  hostileString,
  plausibleValue,
  toJsonText,
  withHostileBytes,
  type FuzzBody,
  type JsonSchema,
  type Schemas,
} from './support/fuzz-arbitraries.js';

interface Operation {
  method: string;
  /** OpenAPI path, `{param}` placeholders. */
  path: string;
  operationId: string;
  secured: boolean;
  pathParameters: Array<{ name: string; schema: JsonSchema }>;
  queryParameters: Array<{ name: string; schema: JsonSchema }>;
  headerParameters: string[];
  bodySchema?: JsonSchema;
}

interface RawAnswer {
  status: number;
  contentType: string;
  text: string;
}

type TokenKind = 'valid' | 'none' | 'garbage' | 'basic' | 'empty-bearer';

interface RawRequest {
  method: string;
  /** Path and query, already percent-encoded as the attacker wants them (sent as is). */
  target: string;
  /** Which Authorization header: the token itself is filled in when sending, so no counterexample prints it. */
  auth: TokenKind;
  headers: Record<string, string>;
  body?: string | Uint8Array;
}

/** A request as fast-check prints a counterexample: no token, bodies cut to 300 characters. */
function fuzzRequest(request: RawRequest): RawRequest {
  return Object.assign(request, {
    [fc.toStringMethod]: () => {
      const body = request.body === undefined ? '' : typeof request.body === 'string' ? request.body : `bytes ${Buffer.from(request.body).toString('hex')}`;
      const shown = body.length > 300 ? `${body.slice(0, 300)}… (${body.length} chars)` : body;
      return `${request.method} ${request.target.slice(0, 300)} auth=${request.auth} headers=${JSON.stringify(request.headers)} body=${JSON.stringify(shown)}`;
    },
  });
}

const ERROR_CODES = new Set<string>(Object.values(ErrorCode));
const ERROR_BODY_FIELDS = new Set(['code', 'message', 'details', 'retryAfter', 'mismatched', 'stale']);

/** Routes that must be in the document: the enumeration is the relay's, and not empty. */
const EXPECTED_ROUTES = [
  'POST /v1/auth/register',
  'POST /v1/auth/login',
  'POST /v1/auth/refresh',
  'POST /v1/auth/password',
  'DELETE /v1/account',
  'PUT /v1/keys',
  'GET /v1/keys/{username}',
  'POST /v1/messages',
  'GET /v1/messages',
  'DELETE /v1/messages/{id}',
  'POST /v1/messages/sealed',
  'POST /v1/messages/multi-recipient',
  'PUT /v1/provisioning/{id}',
  'POST /v1/provisioning/{id}/receive',
  'POST /v1/devices/link',
  'DELETE /v1/devices/{deviceId}',
  'PUT /v1/backup',
  'GET /v1/accounts/{accountId}',
  'PUT /v1/account/unidentified-access',
];

describe('adversarial: fuzzing every HTTP route', () => {
  let relay: TestRelay;
  let operations: Operation[];
  let schemas: Schemas;
  /** The attacker's own account: its token is the "valid token" of every request. */
  let attacker: AuthResponse;
  let attackerKeys: DeviceKeys;
  /** A keyed account the attacker's sends address. */
  let target: { user: AuthResponse; keys: DeviceKeys };
  let errorLogs: jest.SpiedFunction<Logger['error']>;
  let fatalLogs: jest.SpiedFunction<Logger['fatal']>;

  /** One valid body per known operation: the base that mutations start from (others get a schema-shaped one). */
  let validBodies: Record<string, unknown>;

  beforeAll(async () => {
    relay = await startTestRelay();
    const response = await fetch(`${relay.baseUrl}${OPENAPI_JSON_PATH}`);
    const document = (await response.json()) as {
      paths: Record<string, Record<string, {
        operationId: string;
        security?: unknown[];
        parameters?: Array<{ name: string; in: string; schema?: JsonSchema }>;
        requestBody?: { content: Record<string, { schema: JsonSchema }> };
      }>>;
      components: { schemas: Schemas };
    };
    schemas = document.components.schemas;
    operations = Object.entries(document.paths).flatMap(([path, item]) =>
      Object.entries(item).map(([method, operation]) => ({
        method: method.toUpperCase(),
        path,
        operationId: operation.operationId,
        secured: (operation.security ?? []).length > 0,
        pathParameters: (operation.parameters ?? []).filter((p) => p.in === 'path').map((p) => ({ name: p.name, schema: p.schema ?? {} })),
        queryParameters: (operation.parameters ?? []).filter((p) => p.in === 'query').map((p) => ({ name: p.name, schema: p.schema ?? {} })),
        headerParameters: (operation.parameters ?? []).filter((p) => p.in === 'header').map((p) => p.name),
        bodySchema: operation.requestBody?.content['application/json']?.schema,
      })),
    );
    ({ user: attacker, keys: attackerKeys } = await registerKeyedUser(relay, 'fuzzer'));
    target = await registerKeyedUser(relay, 'target');
    const b64 = (length: number) => randomBytes(length).toString('base64');
    const toTarget = { deviceId: 1, registrationId: target.keys.registrationId, ciphertext: b64(48) };
    // No real password or token in any base: they would be printed with a counterexample.
    validBodies = {
      AuthController_register: { username: uniqueUsername('fz'), password: 'fuzzed password' },
      AuthController_login: { username: attacker.username, password: 'not the password', deviceId: 1 },
      AuthController_refresh: { refreshToken: randomBytes(32).toString('base64url') },
      AuthController_changePassword: { currentPassword: 'not the password', newPassword: 'another password' },
      AccountController_delete: { password: 'not the password' },
      ProvisioningController_approve: { message: b64(120) },
      ProvisioningController_receive: { secret: randomBytes(32).toString('base64url') },
      DevicesController_link: { provisioningId: '6f1c1f0e-8a49-4c39-9f0e-2f4b7c8f9a10', secret: randomBytes(32).toString('base64url') },
      KeysController_upload: new DeviceKeys({ identity: attackerKeys.identity, registrationId: attackerKeys.registrationId, preKeys: 1, kyberPreKeys: 1, firstKeyId: 5000 }).uploadRequest(),
      MessagesController_send: { to: target.user.username, messages: [{ ...toTarget, type: EnvelopeType.Signal }] },
      UnidentifiedAccessController_set: { accessKey: b64(16), unrestricted: false },
      SealedMessagesController_send: { to: target.user.username, messages: [toTarget] },
      SealedMessagesController_sendMultiRecipient: { payload: b64(200) },
      BackupController_upload: { blob: b64(64) },
    };
    errorLogs = jest.spyOn(Logger.prototype, 'error');
    fatalLogs = jest.spyOn(Logger.prototype, 'fatal');
  });

  afterEach(async () => {
    // Every property ends with a well-behaved client being served, and nothing logged as a relay failure.
    try {
      await expectWellBehavedClientServed();
      expect(errorLogs.mock.calls.map((call) => String(call[0]))).toEqual([]);
      expect(fatalLogs.mock.calls.map((call) => String(call[0]))).toEqual([]);
    } finally {
      errorLogs.mockClear();
      fatalLogs.mockClear();
    }
  });

  afterAll(async () => {
    errorLogs?.mockRestore();
    fatalLogs?.mockRestore();
    await relay?.close();
  });

  /** A fresh client registers, uploads keys, sends to another and that one receives it. */
  async function expectWellBehavedClientServed(): Promise<void> {
    const sender = await registerKeyedUser(relay, 'good');
    const recipient = await registerKeyedUser(relay, 'good');
    const ciphertext = randomBytes(24).toString('base64');
    const sent = await httpJson(relay, 'POST', '/v1/messages', {
      token: sender.user.accessToken,
      body: { to: recipient.user.username, messages: [{ deviceId: 1, registrationId: recipient.keys.registrationId, type: EnvelopeType.Signal, ciphertext }] },
    });
    expect(sent.status).toBe(201);
    const inbox = await httpJson<{ messages: Array<{ ciphertext: string }> }>(relay, 'GET', '/v1/messages', { token: recipient.user.accessToken });
    expect(inbox.status).toBe(200);
    expect(inbox.body.messages.map((message) => message.ciphertext)).toEqual([ciphertext]);
  }

  /** One request exactly as given (no URL normalization, bodies on any method), and its answer. */
  function send(request: RawRequest): Promise<RawAnswer> {
    const { hostname, port } = new URL(relay.baseUrl);
    const body = request.body === undefined ? undefined : typeof request.body === 'string' ? Buffer.from(request.body) : Buffer.from(request.body);
    return new Promise((resolve, reject) => {
      const outgoing = httpRequest(
        {
          host: hostname,
          port,
          method: request.method,
          path: request.target,
          headers: {
            ...authorization(request.auth),
            ...request.headers,
            ...(body !== undefined && { 'content-length': String(body.length) }),
          },
        },
        (response) => {
          const chunks: Buffer[] = [];
          response.on('data', (chunk: Buffer) => chunks.push(chunk));
          response.on('end', () =>
            resolve({ status: response.statusCode ?? 0, contentType: String(response.headers['content-type'] ?? ''), text: Buffer.concat(chunks).toString('utf8') }),
          );
          response.on('error', reject);
        },
      );
      outgoing.on('error', reject);
      outgoing.end(body);
    });
  }

  /** What is wrong with an answer, or undefined: no 5xx, and every 4xx is an ErrorBody with a code at its documented status. */
  function problemWith(answer: RawAnswer): string | undefined {
    const seen = `${answer.status} ${answer.contentType} ${answer.text.slice(0, 300)}`;
    if (answer.status >= 500) return `a server error: ${seen}`;
    if (answer.status < 200 || (answer.status >= 300 && answer.status < 400)) return `an unexpected status: ${seen}`;
    if (answer.status < 400) return undefined;
    if (!answer.contentType.startsWith('application/json')) return `a refusal that is not JSON: ${seen}`;
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(answer.text) as Record<string, unknown>;
    } catch {
      return `a refusal whose body does not parse: ${seen}`;
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) return `a refusal that is not an object: ${seen}`;
    const unknownFields = Object.keys(body).filter((key) => !ERROR_BODY_FIELDS.has(key));
    if (unknownFields.length > 0) return `a refusal with fields outside ErrorBody (${unknownFields.join(', ')}): ${seen}`;
    if (typeof body['code'] !== 'string' || !ERROR_CODES.has(body['code'])) return `a refusal without a protocol ErrorCode: ${seen}`;
    if (body['code'] === ErrorCode.Internal) return `an INTERNAL refusal: ${seen}`;
    if (typeof body['message'] !== 'string') return `a refusal without a message: ${seen}`;
    if (body['details'] !== undefined && !(Array.isArray(body['details']) && body['details'].every((line) => typeof line === 'string'))) {
      return `details that are not strings: ${seen}`;
    }
    const documented = HTTP_STATUS_OF[body['code'] as ErrorCode];
    if (documented !== answer.status) return `${String(body['code'])} answered with ${answer.status}, documented ${documented}: ${seen}`;
    return undefined;
  }

  const tokenKind = fc.constantFrom<TokenKind>('valid', 'valid', 'none', 'garbage', 'basic', 'empty-bearer');

  function authorization(kind: TokenKind): Record<string, string> {
    switch (kind) {
      case 'valid':
        return { authorization: `Bearer ${attacker.accessToken}` };
      case 'none':
        return {};
      case 'garbage':
        return { authorization: `Bearer ${randomBytes(48).toString('base64url')}.${randomBytes(8).toString('hex')}` };
      case 'basic':
        return { authorization: `Basic ${Buffer.from(`${attacker.username}:x`).toString('base64')}` };
      case 'empty-bearer':
        return { authorization: 'Bearer ' };
    }
  }

  /** Header-safe text (what an HTTP client lets through). */
  const headerText = fc.stringMatching(/^[\x21-\x7e]{0,200}$/);

  /** A plausible value for a path parameter, percent-encoded. */
  function plausiblePathValue(schema: JsonSchema): fc.Arbitrary<string> {
    return plausibleValue(schema, schemas).map((value) => encodeText(String(value)));
  }

  /** Path segments a hostile client sends: not UUIDs, huge, signed, hex, percent-encoded garbage, traversal. */
  const hostilePathValue: fc.Arbitrary<string> = fc.oneof(
    fc.constantFrom(
      '%ZZ',
      '%',
      '%E0%A4%A',
      '%00',
      '%C0%AE',
      '%E2%80%AE',
      '%2F',
      '..%2F..%2Fhealth%2Flive',
      '%2e%2e',
      '1e309',
      '99999999999999999999999',
      '-1',
      '0',
      '0x7',
      '1.5',
      '%201',
      'NaN',
      '6F1C1F0E-8A49-4C39-9F0E-2F4B7C8F9A10',
      '%7B6f1c1f0e-8a49-4c39-9f0e-2f4b7c8f9a10%7D',
      '00000000-0000-0000-0000-000000000000',
      'x'.repeat(5_000),
      '__proto__',
      'constructor',
    ),
    hostileString.map((text) => encodeText(text.slice(0, 2_000))),
    fc.string({ unit: 'binary', maxLength: 40 }).map(encodeText),
  );

  const queryValue: fc.Arbitrary<string> = fc.oneof(
    fc.constantFrom('', '0', '1', '100', '101', '-1', '1.5', '1e309', '1e2', '0x10', '%201', 'NaN', 'Infinity', '9'.repeat(400), '%ZZ', '%00', 'null', '[]', '{}'),
    hostileNumber.map((raw) => encodeURIComponent(raw.text)),
    hostileString.map((text) => encodeText(text.slice(0, 500))),
  );

  /** A query string: documented parameters with hostile values, repeated, bracketed, unknown, malformed. */
  function hostileQuery(operation: Operation): fc.Arbitrary<string> {
    const names = [...operation.queryParameters.map((parameter) => parameter.name), 'limit', 'x', '__proto__', 'constructor', 'limit[]', 'limit[a]', '%ZZ', ''];
    const pair = fc.tuple(fc.constantFrom(...names), queryValue).map(([name, value]) => `${name}=${value}`);
    return fc.oneof(
      fc.array(pair, { minLength: 1, maxLength: 4 }).map((pairs) => `?${pairs.join('&')}`),
      fc.constantFrom('?', '?&&&', '?=', '?limit', '?limit=1&limit=2', '?limit[]=1&limit[]=2', '?a[b][c][d][e][f]=1', `?${'a='.repeat(2_000)}`),
    );
  }

  function pathOf(operation: Operation, values: Record<string, string>): string {
    return operation.path.replace(/\{(\w+)\}/g, (_whole, name: string) => values[name] ?? 'x');
  }

  /** A plausible path (params inside their schema) for requests that fuzz something else. */
  function plausiblePath(operation: Operation): fc.Arbitrary<string> {
    if (operation.pathParameters.length === 0) return fc.constant(operation.path);
    return fc
      .tuple(...operation.pathParameters.map((parameter) => plausiblePathValue(parameter.schema).map((value) => [parameter.name, value] as const)))
      .map((entries) => pathOf(operation, Object.fromEntries(entries)));
  }

  /** The base a body mutation starts from: the operation's valid body, or one shaped by its schema. */
  function baseBody(operation: Operation): fc.Arbitrary<unknown> {
    const shaped = plausibleValue(operation.bodySchema ?? { type: 'object' }, schemas);
    const valid = validBodies[operation.operationId];
    return valid === undefined ? shaped : fc.oneof(fc.constant(valid), shaped);
  }

  /** Headers of one request: JSON content type, and the access-key header where the route reads one. */
  function headersFor(operation: Operation, accessKey: string | undefined): Record<string, string> {
    return {
      'content-type': 'application/json',
      ...(accessKey !== undefined && operation.headerParameters.includes(UNIDENTIFIED_ACCESS_KEY_HEADER) && { [UNIDENTIFIED_ACCESS_KEY_HEADER]: accessKey }),
    };
  }

  const accessKeyHeader = fc.option(fc.oneof(fc.uint8Array({ minLength: 16, maxLength: 16 }).map((bytes) => Buffer.from(bytes).toString('base64')), headerText), {
    nil: undefined,
  });

  /** Sends one request and fails (naming the route) unless the answer is stable; returns the answer. */
  async function expectStable(operation: Pick<Operation, 'method' | 'path'>, request: RawRequest): Promise<RawAnswer> {
    const answer = await send(request);
    const problem = problemWith(answer);
    if (problem !== undefined) throw new Error(`${operation.method} ${operation.path}: ${problem}`);
    return answer;
  }

  /**
   * Runs `numRuns(operation)` requests against each operation, each answer
   * checked by `expectStable`; returns, per `METHOD path`, the statuses and
   * codes it answered (to show how far the fuzzing reached).
   */
  async function fuzzEveryOperation(
    numRuns: (operation: Operation) => number,
    requestFor: (operation: Operation) => fc.Arbitrary<RawRequest>,
  ): Promise<Map<string, Set<string>>> {
    const answered = new Map<string, Set<string>>();
    for (const operation of operations) {
      const runs = numRuns(operation);
      if (runs === 0) continue;
      const outcomes = new Set<string>();
      answered.set(`${operation.method} ${operation.path}`, outcomes);
      await fc.assert(
        fc.asyncProperty(
          requestFor(operation).map((request) => fuzzRequest(request)),
          async (request) => {
            const answer = await expectStable(operation, request);
            outcomes.add(answer.status < 400 ? String(answer.status) : (JSON.parse(answer.text) as { code: string }).code);
          },
        ),
        fuzzParameters(runs),
      );
    }
    return answered;
  }

  const bodyRequest = (operation: Operation, body: fc.Arbitrary<FuzzBody>): fc.Arbitrary<RawRequest> =>
    fc.tuple(plausiblePath(operation), body, tokenKind, accessKeyHeader).map(([path, fuzzBody, auth, accessKey]) => ({
      method: operation.method,
      target: path,
      auth,
      headers: headersFor(operation, accessKey),
      body: fuzzBody.text,
    }));

  const withBodies = () => operations.filter((operation) => operation.bodySchema !== undefined);
  const onePath = (operation: Operation) => fc.sample(plausiblePath(operation), { numRuns: 1, seed: FUZZ_SEED })[0]!;

  it("a route added later escapes the fuzzing: the routes are read from the relay's OpenAPI document, which holds every route that must exist, each body with a schema the fuzzer shapes", () => {
    const routes = operations.map((operation) => `${operation.method} ${operation.path}`);
    expect(routes).toEqual(expect.arrayContaining(EXPECTED_ROUTES));
    expect(withBodies().length).toBeGreaterThanOrEqual(14);
    // Every documented body has a schema the fuzzer can shape, so no route escapes the body fuzzing.
    for (const operation of withBodies()) {
      expect(fc.sample(plausibleValue(operation.bodySchema!, schemas), { numRuns: 1, seed: FUZZ_SEED })).toHaveLength(1);
    }
  });

  it('a client sends random, truncated, wrongly typed, deeply nested, oversized and raw-byte bodies to every route, with and without a token: never a 5xx, every refusal an ErrorBody with a protocol ErrorCode at its documented status', async () => {
    const answered = await fuzzEveryOperation(
      (operation) => (operation.bodySchema ? 30 : 4),
      (operation) => bodyRequest(operation, hostileBody(baseBody(operation))),
    );
    expect(answered.size).toBe(operations.length);
    // The bodies got past authentication and were read: every route that takes one refused some as invalid.
    for (const operation of withBodies()) {
      const outcomes = [...answered.get(`${operation.method} ${operation.path}`)!];
      expect({ route: `${operation.method} ${operation.path}`, read: outcomes.some((outcome) => outcome === ErrorCode.ValidationFailed || outcome === ErrorCode.MalformedJson) }).toEqual({
        route: `${operation.method} ${operation.path}`,
        read: true,
      });
    }
  });

  it('a client puts invalid base64, base64url, wrong-length bytes and 33-byte non-keys in every byte field: refused with a documented ErrorCode, never a 5xx', async () => {
    const byteFields = /(^|\.)(identityKey|publicKey|signature|ciphertext|message|blob|payload|accessKey)$/;
    await fuzzEveryOperation(
      (operation) => (operation.bodySchema ? 12 : 0),
      (operation) =>
        fc
          .tuple(plausiblePath(operation), withHostileBytes(baseBody(operation), (path) => byteFields.test(path)), tokenKind)
          .map(([path, body, auth]) => ({ method: operation.method, target: path, auth, headers: headersFor(operation, undefined), body: toJsonText(body) })),
    );
    // The canonical non-key, by the key's owner: 33 bytes whose type byte is not 0x05.
    const nonKey = Buffer.concat([Buffer.from([0x04]), randomBytes(32)]).toString('base64');
    const upload = await httpJson(relay, 'PUT', '/v1/keys', {
      token: attacker.accessToken,
      body: { ...(validBodies['KeysController_upload'] as object), identityKey: nonKey },
    });
    expect({ status: upload.status, code: upload.body.code }).toEqual({ status: 400, code: ErrorCode.InvalidKey });
  });

  it('a client sends 1e309, -0, 2^53+1 and other hostile numbers, and unicode, NUL and over-long strings, in every field: never a 5xx, always a documented refusal or a valid answer', async () => {
    await fuzzEveryOperation(
      (operation) => (operation.bodySchema ? 15 : 0),
      (operation) =>
        bodyRequest(
          operation,
          fc.tuple(baseBody(operation), fc.nat(), fc.oneof(hostileNumber, hostileString)).map(([body, pick, scalar]): FuzzBody => ({
            kind: 'mutated',
            text: toJsonText(replaceScalar(body, pick, scalar)),
          })),
        ),
    );
  });

  it('a client sends ids that are not UUIDs, huge or signed numbers, hex, traversal and percent-encoded garbage as path parameters: never a 5xx, always an ErrorBody', async () => {
    expect(operations.filter((operation) => operation.pathParameters.length > 0).length).toBeGreaterThanOrEqual(5);
    await fuzzEveryOperation(
      (operation) => (operation.pathParameters.length > 0 ? 20 : 0),
      (operation) =>
        fc
          .tuple(
            fc.tuple(
              ...operation.pathParameters.map((parameter) =>
                fc.oneof(hostilePathValue, plausiblePathValue(parameter.schema)).map((value) => [parameter.name, value] as const),
              ),
            ),
            tokenKind,
            baseBody(operation),
          )
          .map(([entries, auth, body]) => ({
            method: operation.method,
            target: pathOf(operation, Object.fromEntries(entries)),
            auth,
            headers: headersFor(operation, undefined),
            ...(operation.bodySchema && { body: toJsonText(body) }),
          })),
    );
  });

  it('a client spells a path or query integer as hex, with a space, a fraction, an exponent or a sign (DELETE /v1/devices/0x1, ?limit=0x10): VALIDATION_FAILED, never read as another number', async () => {
    const spellings = ['0x1', '%201', '1%20', '1.0', '1e0', '%2B1', '0b1', '-0'];
    for (const spelling of spellings) {
      for (const [method, target] of [
        ['DELETE', `/v1/devices/${spelling}`],
        ['GET', `/v1/messages?limit=${spelling}`],
      ] as const) {
        const answer = await expectStable({ method, path: target }, { method, target, auth: 'valid', headers: {} });
        expect({ target, status: answer.status, code: (JSON.parse(answer.text) as { code?: string }).code }).toEqual({ target, status: 400, code: ErrorCode.ValidationFailed });
      }
    }
  });

  it('a client sends hostile query strings to every route (out-of-range, non-numeric, repeated, bracketed, unknown and malformed parameters): never a 5xx, always an ErrorBody', async () => {
    await fuzzEveryOperation(
      (operation) => (operation.queryParameters.length > 0 ? 30 : 4),
      (operation) =>
        fc.tuple(plausiblePath(operation), hostileQuery(operation), tokenKind).map(([path, query, auth]) => ({
          method: operation.method,
          target: `${path}${query}`,
          auth,
          headers: {},
        })),
    );
  });

  it('a client sends bodies with a wrong, unsupported or missing content type or encoding, and a gzip bomb: refused as an ErrorBody (PAYLOAD_TOO_LARGE for the bomb), never a 5xx', async () => {
    const contentTypes = [
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      'application/json; charset=utf-16le',
      'application/json; charset=koi8-r',
      'application/json; charset=nonsense',
      'application/vnd.api+json',
      'application/json, text/plain',
      'a/b/c;;;=',
      '',
    ];
    const encodings = ['gzip', 'deflate', 'br', 'compress', 'identity', 'gzip, gzip', 'x-nonsense'];
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...withBodies()),
        fc.constantFrom(...contentTypes),
        fc.option(fc.constantFrom(...encodings), { nil: undefined }),
        fc.uint8Array({ maxLength: 64 }),
        async (operation, contentType, encoding, junk) => {
          const body = JSON.stringify(validBodies[operation.operationId] ?? {});
          await expectStable(
            operation,
            fuzzRequest({
              method: operation.method,
              target: onePath(operation),
              auth: 'valid',
              headers: { 'content-type': contentType, ...(encoding !== undefined && { 'content-encoding': encoding }) },
              body: encoding === undefined ? body : Buffer.concat([Buffer.from(junk), Buffer.from(body)]),
            }),
          );
        },
      ),
      fuzzParameters(60),
    );
    // 20 MB inflated from a few KB: refused by its inflated size.
    const bomb = gzipSync(Buffer.concat([Buffer.from('{"blob":"'), Buffer.alloc(20 * 1024 * 1024, 0x41), Buffer.from('"}')]));
    expect(bomb.length).toBeLessThan(MAX_HTTP_BODY_BYTES / 10);
    const answer = await expectStable(
      { method: 'PUT', path: '/v1/backup' },
      { method: 'PUT', target: '/v1/backup', auth: 'valid', headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' }, body: bomb },
    );
    expect(JSON.parse(answer.text)).toMatchObject({ code: ErrorCode.PayloadTooLarge });
  });

  it('a client sends a body of 150,000 empty objects or 100,000 zeros to every route that reads one (validation work and answer bytes per value): VALIDATION_FAILED naming the bound, with an answer under 1 KB', async () => {
    for (const operation of withBodies()) {
      const valid = (validBodies[operation.operationId] ?? {}) as Record<string, unknown>;
      const firstField = Object.keys(valid)[0] ?? 'field';
      for (const wide of [Array.from({ length: 150_000 }, () => ({})), Array.from({ length: 100_000 }, () => 0)]) {
        const body = JSON.stringify({ ...valid, [firstField]: wide });
        expect(body.length).toBeLessThan(MAX_HTTP_BODY_BYTES);
        const answer = await expectStable(operation, { method: operation.method, target: onePath(operation), auth: 'valid', headers: headersFor(operation, undefined), body });
        const refusal = JSON.parse(answer.text) as { code: ErrorCode; details?: string[] };
        if (refusal.code === ErrorCode.AuthenticationRequired) continue;
        expect({ route: `${operation.method} ${operation.path}`, code: refusal.code, details: refusal.details, short: answer.text.length < 1024 }).toEqual({
          route: `${operation.method} ${operation.path}`,
          code: ErrorCode.ValidationFailed,
          details: [`body: must not hold more than ${MAX_JSON_VALUES} values`],
          short: true,
        });
      }
    }
  });

  it("a client sends a body nested 10_000 deep (arrays, objects, both, and inside a valid body's field) to every route that reads one: VALIDATION_FAILED, never a 5xx", async () => {
    for (const operation of withBodies()) {
      const valid = (validBodies[operation.operationId] ?? {}) as Record<string, unknown>;
      const firstField = Object.keys(valid)[0] ?? 'field';
      const bodies = [
        deeplyNested(10_000, 'array').text,
        deeplyNested(10_000, 'object').text,
        deeplyNested(10_000, 'mixed').text,
        toJsonText({ ...valid, [firstField]: deeplyNested(10_000, 'object') }),
      ];
      for (const body of bodies) {
        const answer = await expectStable(operation, { method: operation.method, target: onePath(operation), auth: 'valid', headers: headersFor(operation, undefined), body });
        const refusal = JSON.parse(answer.text) as { code: ErrorCode; details?: string[] };
        // A route without a token refuses that first; every other refuses the body itself.
        if (refusal.code !== ErrorCode.AuthenticationRequired) {
          expect({ route: `${operation.method} ${operation.path}`, status: answer.status, code: refusal.code }).toEqual({
            route: `${operation.method} ${operation.path}`,
            status: 400,
            code: ErrorCode.ValidationFailed,
          });
        }
      }
    }
  });
});

/** Percent-encoded UTF-8 of `text`; a lone surrogate (which has no UTF-8) is sent as its replacement character's bytes. */
function encodeText(text: string): string {
  return encodeURIComponent(text.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD'));
}

/** `value` with its `pick`-th number or string field (modulo their count) replaced by `scalar`; `scalar` itself when there is none. */
function replaceScalar(value: unknown, pick: number, scalar: unknown): unknown {
  let count = 0;
  const countScalars = (node: unknown): void => {
    if (typeof node === 'number' || typeof node === 'string') count++;
    else if (typeof node === 'object' && node !== null) Object.values(node).forEach(countScalars);
  };
  countScalars(value);
  if (count === 0) return scalar;
  let index = pick % count;
  const walk = (node: unknown): unknown => {
    if (typeof node === 'number' || typeof node === 'string') return index-- === 0 ? scalar : node;
    if (Array.isArray(node)) return node.map(walk);
    if (typeof node === 'object' && node !== null) return Object.fromEntries(Object.entries(node).map(([key, child]) => [key, walk(child)]));
    return node;
  };
  return walk(value);
}
