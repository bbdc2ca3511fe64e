// @chat/protocol's DTO classes carry class-transformer decorators that call
// `Reflect.getMetadata` while the module loads, so the polyfill must be
// evaluated first. SDK modules take runtime values of the protocol from here
// (type-only imports may use '@chat/protocol' directly). Drop this file once
// @chat/protocol imports 'reflect-metadata' itself.
import 'reflect-metadata';
export * from '@chat/protocol';
