/**
 * The relay's HTTP API as an OpenAPI 3 document, built by `@nestjs/swagger`
 * from the controllers the relay actually maps and served at
 * `GET /v1/openapi.json` (a Swagger UI at `/v1/docs`).
 *
 * The request DTOs live in `@chat/protocol`, which depends on nothing but
 * class-validator and class-transformer. Rather than add `@ApiProperty` there
 * (or the Nest CLI's swagger plugin, which needs the Nest CLI's compiler and
 * does not run under `tsc -b` or @swc/jest), their schemas come from the
 * class-validator metadata the relay already validates with
 * (`class-validator-jsonschema`): the document describes exactly the rules a
 * request is checked against. Response bodies are TypeScript interfaces with
 * no runtime form; each operation lists its statuses and the error body, and
 * docs/protocol.md gives the bodies. WebSocket frames are not HTTP routes:
 * docs/protocol.md owns them.
 */
import type { INestApplication, Type } from '@nestjs/common';
import { GUARDS_METADATA, ROUTE_ARGS_METADATA } from '@nestjs/common/constants.js';
import { RouteParamtypes } from '@nestjs/common/enums/route-paramtypes.enum.js';
import { ModulesContainer } from '@nestjs/core';
import {
  ApiBearerAuth,
  DocumentBuilder,
  SwaggerModule,
  type OpenAPIObject,
  type OperationObject,
  type ParameterObject,
  type PathItemObject,
  type SchemaObject,
} from '@nestjs/swagger';
import { defaultMetadataStorage } from 'class-transformer/cjs/storage.js';
import { validationMetadatasToSchemas } from 'class-validator-jsonschema';
import { ErrorCode, UNIDENTIFIED_ACCESS_KEY_HEADER } from '@chat/protocol';
import { JwtAuthGuard } from '../auth/jwt-auth.guard.js';
import { OptionalJwtAuthGuard } from '../sealed/optional-jwt-auth.guard.js';

/** Where the document is served. */
export const OPENAPI_JSON_PATH = '/v1/openapi.json';
/** Where the Swagger UI over it is served. */
export const OPENAPI_UI_PATH = '/v1/docs';

const BEARER = 'bearer';

/**
 * Serves the document (call before `listen`). It is built from the app's
 * controllers on the first request for it, once: building it took about a
 * tenth of the relay's start-up (issue #9, cold start), and most runs never
 * ask for it.
 */
export function setUpOpenApi(app: INestApplication): void {
  SwaggerModule.setup(OPENAPI_UI_PATH.slice(1), app, () => buildOpenApiDocument(app), {
    jsonDocumentUrl: OPENAPI_JSON_PATH.slice(1),
    raw: ['json'],
    customSiteTitle: 'Relay HTTP API',
  });
}

export function buildOpenApiDocument(app: INestApplication): OpenAPIObject {
  const handlers = handlersOf(app);
  markBearerRoutes(handlers);
  const config = new DocumentBuilder()
    .setTitle('Relay HTTP API')
    .setDescription(
      'The end-to-end encrypted messaging relay. Request bodies are the `@chat/protocol` DTOs, ' +
        'with the exact constraints the relay validates. Response bodies, every error code and the ' +
        'WebSocket frames (`GET /v1/ws`) are specified in docs/protocol.md.',
    )
    .setVersion('1')
    .addBearerAuth({ type: 'http', scheme: 'bearer', bearerFormat: 'JWT' }, BEARER)
    .build();
  const document = SwaggerModule.createDocument(app, config);
  const schemas = document.components?.schemas ?? {};
  // Every DTO class class-validator knows of, with nested DTOs as $refs.
  const dtoSchemas = validationMetadatasToSchemas({
    classTransformerMetadataStorage: defaultMetadataStorage,
    refPointerPrefix: '#/components/schemas/',
  }) as Schemas;
  for (const name of Object.keys(schemas)) {
    if (dtoSchemas[name]) schemas[name] = dtoSchemas[name];
  }
  // Nested DTOs reached only through another DTO's $ref.
  for (let added = true; added; ) {
    added = false;
    for (const name of referencedSchemaNames(schemas)) {
      if (!schemas[name] && dtoSchemas[name]) {
        schemas[name] = dtoSchemas[name];
        added = true;
      }
    }
  }
  schemas.ErrorBody = ERROR_BODY_SCHEMA;
  document.components = { ...document.components, schemas };
  const dtoParameters = dtoParametersOf(handlers, dtoSchemas);
  for (const item of Object.values(document.paths)) {
    for (const operation of operationsOf(item)) {
      const extra = dtoParameters.get(operation.operationId ?? '') ?? [];
      const named = new Set((operation.parameters ?? []).map((parameter: ParameterObject | { $ref: string }) => ('name' in parameter ? parameter.name : '')));
      operation.parameters = [...(operation.parameters ?? []), ...extra.filter((parameter) => !named.has(parameter.name))];
    }
  }
  addErrorResponses(document);
  return document;
}

type Handler = { controller: Type; key: string; handler: object; descriptor: PropertyDescriptor };

function handlersOf(app: INestApplication): Handler[] {
  const handlers: Handler[] = [];
  for (const module of app.get(ModulesContainer).values()) {
    for (const wrapper of module.controllers.values()) {
      const controller = wrapper.metatype as Type | null;
      if (!controller) continue;
      for (const key of Object.getOwnPropertyNames(controller.prototype)) {
        const descriptor = Object.getOwnPropertyDescriptor(controller.prototype, key);
        if (key === 'constructor' || !descriptor || typeof descriptor.value !== 'function') continue;
        handlers.push({ controller, key, handler: descriptor.value as object, descriptor });
      }
    }
  }
  return handlers;
}

/**
 * `@ApiBearerAuth` on every route a JWT guard protects, read from the guards
 * themselves so the document cannot claim a route is open that is not.
 */
function markBearerRoutes(handlers: Handler[]): void {
  for (const { controller, key, handler, descriptor } of handlers) {
    if (markedBearer.has(handler)) continue;
    const guards = [...guardsOf(controller), ...guardsOf(handler)];
    if (guards.includes(JwtAuthGuard) || guards.includes(OptionalJwtAuthGuard)) {
      ApiBearerAuth(BEARER)(controller.prototype as object, key, descriptor);
      markedBearer.add(handler);
    }
  }
}

/** Handlers already marked: the decorator appends, and a document may be built more than once. */
const markedBearer = new WeakSet<object>();

function guardsOf(target: object): unknown[] {
  return (Reflect.getMetadata(GUARDS_METADATA, target) as unknown[] | undefined) ?? [];
}

type Schemas = Record<string, SchemaObject>;

/**
 * Path and query parameters taken whole into a DTO (`@Param() { id }:
 * ProvisioningIdParam`, `@Query() query: ListMessagesQuery`): swagger sees
 * only the class, so each of its properties becomes a parameter here, with
 * the DTO's class-validator schema. Keyed by swagger's operation id.
 */
function dtoParametersOf(handlers: Handler[], dtoSchemas: Schemas): Map<string, ParameterObject[]> {
  const byOperation = new Map<string, ParameterObject[]>();
  for (const { controller, key } of handlers) {
    const args = (Reflect.getMetadata(ROUTE_ARGS_METADATA, controller, key) ?? {}) as Record<string, { index: number; data?: unknown }>;
    const types = (Reflect.getMetadata('design:paramtypes', controller.prototype, key) ?? []) as Array<Type | undefined>;
    const parameters: ParameterObject[] = [];
    for (const [slot, { index, data }] of Object.entries(args)) {
      const paramtype = Number(slot.split(':')[0]);
      const where = paramtype === RouteParamtypes.PARAM ? 'path' : paramtype === RouteParamtypes.QUERY ? 'query' : undefined;
      const schema = types[index] && dtoSchemas[types[index].name];
      if (!where || data !== undefined || !schema?.properties) continue;
      for (const [name, property] of Object.entries(schema.properties)) {
        parameters.push({ name, in: where, required: where === 'path' || (schema.required ?? []).includes(name), schema: property });
      }
    }
    if (parameters.length > 0) byOperation.set(`${controller.name}_${key}`, parameters);
  }
  return byOperation;
}

function referencedSchemaNames(value: unknown, found = new Set<string>()): Set<string> {
  if (Array.isArray(value)) {
    for (const item of value) referencedSchemaNames(item, found);
  } else if (value && typeof value === 'object') {
    for (const [key, item] of Object.entries(value)) {
      if (key === '$ref' && typeof item === 'string') found.add(item.replace('#/components/schemas/', ''));
      else referencedSchemaNames(item, found);
    }
  }
  return found;
}

function operationsOf(item: PathItemObject): OperationObject[] {
  return [item.get, item.put, item.post, item.delete, item.patch, item.head, item.options].filter(
    (operation): operation is OperationObject => operation !== undefined,
  );
}

const ERROR_BODY_SCHEMA: SchemaObject = {
  type: 'object',
  description: 'Every error answer (docs/protocol.md, "Errors").',
  required: ['code', 'message'],
  properties: {
    code: { type: 'string', enum: Object.values(ErrorCode) },
    message: { type: 'string', description: 'For people; clients branch on `code`.' },
    details: { type: 'array', items: { type: 'string' }, description: 'VALIDATION_FAILED: one line per failed constraint.' },
    retryAfter: { type: 'integer', description: 'RATE_LIMITED: seconds until a retry can succeed (also `Retry-After`).' },
    mismatched: { type: 'array', items: { type: 'object' }, description: 'MISMATCHED_DEVICES: per account, missing and extra devices.' },
    stale: { type: 'array', items: { type: 'object' }, description: 'STALE_DEVICES: per account, the stale devices.' },
  },
};

/** Each operation's error answers share one body; the sealed routes also take the access-key header. */
function addErrorResponses(document: OpenAPIObject): void {
  for (const [path, item] of Object.entries(document.paths)) {
    for (const operation of operationsOf(item)) {
      operation.responses.default = {
        description: 'An error: the status and `code` per docs/protocol.md',
        content: { 'application/json': { schema: { $ref: '#/components/schemas/ErrorBody' } } },
      };
      if (path === '/v1/messages/sealed' || path === '/v1/messages/multi-recipient') {
        operation.parameters = [
          ...(operation.parameters ?? []).filter(
            (parameter: ParameterObject | { $ref: string }) => !('in' in parameter && parameter.in === 'header'),
          ),
          {
            name: UNIDENTIFIED_ACCESS_KEY_HEADER,
            in: 'header',
            required: path === '/v1/messages/sealed',
            description: 'Base64 unidentified access key (combined for multi-recipient sends); absent from an authenticated send',
            schema: { type: 'string' },
          },
        ];
      }
    }
  }
}
