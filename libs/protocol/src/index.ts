// class-transformer's @Type decorators read design-time metadata while these
// modules load, so the polyfill is evaluated before any DTO class.
import 'reflect-metadata';

export * from './limits.js';
export * from './errors.js';
export * from './validators.js';
export * from './auth.dto.js';
export * from './keys.dto.js';
export * from './messages.dto.js';
export * from './backup.dto.js';
export * from './devices.dto.js';
export * from './sealed-sender.dto.js';
export * from './frames.js';
