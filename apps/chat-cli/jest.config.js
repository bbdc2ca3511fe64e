import preset from '../../jest.preset.js';

// The preset's SWC transform, with TSX (the Ink screens) and React's automatic runtime.
const [, swcOptions] = preset.transform['^.+\\.ts$'];

export default {
  ...preset,
  displayName: 'chat-cli',
  rootDir: '.',
  testMatch: ['<rootDir>/src/**/*.spec.ts', '<rootDir>/src/**/*.spec.tsx', '<rootDir>/test/**/*.e2e-spec.ts'],
  extensionsToTreatAsEsm: ['.ts', '.tsx'],
  moduleFileExtensions: ['ts', 'tsx', 'js', 'json'],
  transform: {
    '^.+\\.tsx?$': [
      '@swc/jest',
      {
        ...swcOptions,
        jsc: {
          ...swcOptions.jsc,
          parser: { ...swcOptions.jsc.parser, tsx: true },
          transform: { ...swcOptions.jsc.transform, react: { runtime: 'automatic' } },
        },
      },
    ],
  },
};
