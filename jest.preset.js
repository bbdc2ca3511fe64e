// Shared Jest settings. Every project runs in Jest's ESM mode (NestJS 12 is
// ESM-only), so the root scripts set NODE_OPTIONS=--experimental-vm-modules.
// SWC strips types and keeps decorator metadata, which Nest's DI reads.
export default {
  testEnvironment: 'node',
  extensionsToTreatAsEsm: ['.ts'],
  transform: {
    '^.+\\.ts$': [
      '@swc/jest',
      {
        jsc: {
          parser: { syntax: 'typescript', decorators: true },
          transform: { legacyDecorator: true, decoratorMetadata: true, useDefineForClassFields: false },
          target: 'es2022',
          keepClassNames: true,
        },
        module: { type: 'es6' },
        sourceMaps: 'inline',
      },
    ],
  },
  moduleNameMapper: {
    // Source imports carry NodeNext's `.js` suffix; Jest resolves the `.ts` file.
    '^(\\.{1,2}/.*)\\.js$': '$1',
    '^@chat/protocol$': '<rootDir>/../../libs/protocol/src/index.ts',
    '^@chat/signal-sdk$': '<rootDir>/../../libs/signal-sdk/src/index.ts',
    '^@chat/signal-sdk/testing$': '<rootDir>/../../libs/signal-sdk/src/testing/index.ts',
    '^@chat/signal-sdk/testing/conformance$': '<rootDir>/../../libs/signal-sdk/src/testing/store-conformance.ts',
    '^@chat/signal-sdk/sqlite$': '<rootDir>/../../libs/signal-sdk/src/sqlite/index.ts',
    '^@chat/relay-harness$': '<rootDir>/../../libs/relay-harness/src/index.ts',
  },
  moduleFileExtensions: ['ts', 'js', 'json'],
};
