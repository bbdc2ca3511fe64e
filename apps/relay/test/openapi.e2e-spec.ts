/**
 * The served OpenAPI document (GET /v1/openapi.json) against the relay's own
 * router: every HTTP route the relay maps is documented with its method, its
 * parameters and its request DTO's validation rules, nothing undocumented is
 * served, and the document is valid OpenAPI 3.
 */
import { Validator } from '@seriousme/openapi-schema-validator';
import { ROUTE_ARGS_METADATA } from '@nestjs/common/constants.js';
import { RouteParamtypes } from '@nestjs/common/enums/route-paramtypes.enum.js';
import { ModulesContainer } from '@nestjs/core';
import type { Type } from '@nestjs/common';
import { USERNAME_PATTERN } from '@chat/protocol';
import { OPENAPI_JSON_PATH, OPENAPI_UI_PATH } from '../src/openapi/openapi.js';
import { startTestRelay, type TestRelay } from './support/test-relay.js';

interface Schema {
  type?: string;
  pattern?: string;
  properties?: Record<string, Schema>;
  required?: string[];
  $ref?: string;
}
interface Operation {
  operationId: string;
  parameters?: Array<{ name: string; in: string; required?: boolean; schema?: Schema }>;
  requestBody?: { content: Record<string, { schema: Schema }> };
  responses: Record<string, unknown>;
  security?: Array<Record<string, string[]>>;
}
interface Document {
  openapi: string;
  paths: Record<string, Record<string, Operation>>;
  components: { schemas: Record<string, Schema> };
}
interface RouterLayer {
  route?: { path: string; methods: Record<string, boolean> };
}

let relay: TestRelay;
let document: Document;

beforeAll(async () => {
  relay = await startTestRelay();
  const response = await fetch(`${relay.baseUrl}${OPENAPI_JSON_PATH}`);
  expect(response.status).toBe(200);
  expect(response.headers.get('content-type')).toMatch(/application\/json/);
  document = (await response.json()) as Document;
});

afterAll(async () => {
  await relay?.close();
});

/** Express 5 catch-all patterns: `*splat`, `/*splat`, `{/*splat}`. */
const CATCH_ALL = /^(?:\/?\*\w*|\{\/\*\w*\})$/;

/** `METHOD /path/{param}` of every route the relay's Express router serves, except the document's own. */
function routerRoutes(): string[] {
  const express = relay.app.getHttpAdapter().getInstance() as { router: { stack: RouterLayer[] } };
  const routes = new Set<string>();
  for (const layer of express.router.stack) {
    if (!layer.route) continue;
    const { path, methods } = layer.route;
    if (path === OPENAPI_JSON_PATH || path === OPENAPI_UI_PATH || path.startsWith(`${OPENAPI_UI_PATH}/`)) continue;
    // Middleware applied to every route (`forRoutes('*')`, nestjs-pino's logger) sits in the
    // router as a catch-all route for every method; it answers no request itself.
    if (CATCH_ALL.test(path)) continue;
    for (const method of Object.keys(methods)) routes.add(`${method.toUpperCase()} ${path.replace(/:(\w+)/g, '{$1}')}`);
  }
  return [...routes].sort();
}

function documentedRoutes(): string[] {
  return Object.entries(document.paths)
    .flatMap(([path, item]) => Object.keys(item).map((method) => `${method.toUpperCase()} ${path}`))
    .sort();
}

function operation(method: string, path: string): Operation {
  const found = document.paths[path]?.[method];
  if (!found) throw new Error(`${method.toUpperCase()} ${path} is not documented`);
  return found;
}

function refsIn(value: unknown): string[] {
  if (Array.isArray(value)) return value.flatMap(refsIn);
  if (value && typeof value === 'object') {
    return Object.entries(value).flatMap(([key, item]) => (key === '$ref' && typeof item === 'string' ? [item] : refsIn(item)));
  }
  return [];
}

describe('OpenAPI document', () => {
  it('is valid OpenAPI 3', async () => {
    expect(document.openapi).toMatch(/^3\./);
    const result = await new Validator().validate(document as unknown as Record<string, unknown>);
    expect(result.errors).toBeUndefined();
    expect(result.valid).toBe(true);
  });

  it('documents exactly the routes the relay maps', () => {
    const mapped = routerRoutes();
    // A relay with no routes would make the comparison empty.
    expect(mapped).toEqual(expect.arrayContaining(['POST /v1/auth/register', 'GET /v1/keys/{username}', 'DELETE /v1/messages/{id}']));
    expect(documentedRoutes()).toEqual(mapped);
  });

  it('defines every path template parameter and resolves every $ref', () => {
    for (const [path, item] of Object.entries(document.paths)) {
      const templated = [...path.matchAll(/\{(\w+)\}/g)].map((match) => match[1]).sort();
      for (const op of Object.values(item)) {
        const inPath = (op.parameters ?? []).filter((parameter) => parameter.in === 'path');
        expect({ path, parameters: inPath.map((parameter) => parameter.name).sort() }).toEqual({ path, parameters: templated });
        expect(inPath.every((parameter) => parameter.required === true)).toBe(true);
      }
    }
    const refs = refsIn(document);
    expect(refs.length).toBeGreaterThan(0);
    for (const ref of refs) {
      expect(ref).toMatch(/^#\/components\/schemas\//);
      expect(document.components.schemas[ref.replace('#/components/schemas/', '')]).toBeDefined();
    }
  });

  it("gives every body-taking route its DTO's schema, with the rules the relay validates", () => {
    // Each @Body() parameter's class, per operation id, read from the controllers.
    const bodies = new Map<string, string>();
    for (const module of relay.app.get(ModulesContainer).values()) {
      for (const wrapper of module.controllers.values()) {
        const controller = wrapper.metatype as Type | null;
        if (!controller) continue;
        for (const key of Object.getOwnPropertyNames(controller.prototype)) {
          const args = (Reflect.getMetadata(ROUTE_ARGS_METADATA, controller, key) ?? {}) as Record<string, { index: number }>;
          const types = (Reflect.getMetadata('design:paramtypes', controller.prototype, key) ?? []) as Type[];
          for (const [slot, { index }] of Object.entries(args)) {
            if (Number(slot.split(':')[0]) === RouteParamtypes.BODY) bodies.set(`${controller.name}_${key}`, types[index].name);
          }
        }
      }
    }
    expect(bodies.size).toBeGreaterThan(10);
    const operations = Object.values(document.paths).flatMap((item) => Object.values(item));
    for (const [operationId, dto] of bodies) {
      const op = operations.find((candidate) => candidate.operationId === operationId);
      expect({ operationId, schema: op?.requestBody?.content['application/json']?.schema }).toEqual({
        operationId,
        schema: { $ref: `#/components/schemas/${dto}` },
      });
      const schema = document.components.schemas[dto];
      expect({ dto, type: schema.type, hasProperties: Object.keys(schema.properties ?? {}).length > 0 }).toEqual({
        dto,
        type: 'object',
        hasProperties: true,
      });
    }
    const register = document.components.schemas.RegisterRequest;
    expect(register.required).toEqual(expect.arrayContaining(['username', 'password']));
    expect(register.properties?.username.pattern).toBe(USERNAME_PATTERN.source);
    // Nested DTOs are followed through @Type(() => ...).
    expect(document.components.schemas.UploadKeysRequest.properties?.signedPreKey.$ref).toBe('#/components/schemas/SignedPreKeyDto');
  });

  it('documents whole-DTO path and query parameters and which routes take a bearer token', () => {
    expect(operation('delete', '/v1/devices/{deviceId}').parameters).toEqual([
      expect.objectContaining({ name: 'deviceId', in: 'path', required: true, schema: expect.objectContaining({ type: 'integer' }) }),
    ]);
    expect(operation('get', '/v1/messages').parameters).toEqual([
      expect.objectContaining({ name: 'limit', in: 'query', required: false, schema: expect.objectContaining({ type: 'integer' }) }),
    ]);
    expect(operation('get', '/v1/keys').security).toEqual([{ bearer: [] }]);
    expect(operation('post', '/v1/messages').security).toEqual([{ bearer: [] }]);
    expect(operation('post', '/v1/auth/register').security).toBeUndefined();
    expect(operation('post', '/v1/messages/sealed').security).toBeUndefined();
    expect(operation('post', '/v1/messages/sealed').parameters).toEqual([
      expect.objectContaining({ name: 'Unidentified-Access-Key', in: 'header', required: true }),
    ]);
    expect(operation('post', '/v1/auth/register').responses).toHaveProperty('201');
    expect(operation('delete', '/v1/backup').responses).toHaveProperty('204');
    expect(operation('post', '/v1/auth/login').responses).toHaveProperty('default');
  });

  it('serves a Swagger UI over the document', async () => {
    const response = await fetch(`${relay.baseUrl}${OPENAPI_UI_PATH}`);
    expect(response.status).toBe(200);
    expect(await response.text()).toContain('swagger-ui');
  });
});
