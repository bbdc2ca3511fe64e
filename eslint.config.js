import nx from '@nx/eslint-plugin';

export default [
  ...nx.configs['flat/base'],
  ...nx.configs['flat/typescript'],
  {
    ignores: ['**/dist', '**/node_modules', '**/generated', '**/coverage', 'tmp', 'data'],
  },
  {
    files: ['**/*.ts', '**/*.tsx', '**/*.js'],
    rules: {
      // protocol depends on nothing of ours; the SDK only on protocol; the relay
      // on protocol (the SDK only in its tests, see the override below); the
      // terminal client on the SDK; tools (benchmarks) on the SDK and the test
      // harnesses.
      '@nx/enforce-module-boundaries': [
        'error',
        {
          enforceBuildableLibDependency: true,
          allow: [],
          depConstraints: [
            { sourceTag: 'scope:shared', onlyDependOnLibsWithTags: [] },
            { sourceTag: 'scope:sdk', onlyDependOnLibsWithTags: ['scope:shared'] },
            { sourceTag: 'scope:relay', onlyDependOnLibsWithTags: ['scope:shared'] },
            // The terminal client is an app on the SDK, as our users' apps are.
            { sourceTag: 'scope:cli', onlyDependOnLibsWithTags: ['scope:sdk', 'scope:shared'] },
            // Benchmarks and other scripts drive the SDK and the relay as a process.
            { sourceTag: 'scope:tools', onlyDependOnLibsWithTags: ['scope:sdk', 'scope:shared', 'scope:testing'] },
            // Test harnesses (the relay as a child process) depend on nothing of ours.
            { sourceTag: 'scope:testing', onlyDependOnLibsWithTags: [] },
            { sourceTag: 'type:lib', onlyDependOnLibsWithTags: ['type:lib'] },
          ],
        },
      ],
    },
  },
  {
    files: ['**/*.ts', '**/*.tsx'],
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    // A test that asserts a value exists and then reads it says so with `!`.
    files: ['**/*.spec.ts', '**/*.spec.tsx', '**/test/**/*.ts', '**/testing/**/*.ts', '**/test-support/**/*.ts'],
    rules: { '@typescript-eslint/no-non-null-assertion': 'off' },
  },
  {
    // The relay's end-to-end tests drive real SDK clients against it, and start
    // the built relay as a process through the shared harness.
    files: ['apps/relay/test/**/*.ts'],
    rules: {
      '@nx/enforce-module-boundaries': [
        'error',
        {
          depConstraints: [{ sourceTag: 'scope:relay', onlyDependOnLibsWithTags: ['scope:shared', 'scope:sdk', 'scope:testing'] }],
        },
      ],
    },
  },
  {
    // The terminal client's whole-system tests start the built relay through the shared harness.
    files: ['apps/chat-cli/test/**/*.ts'],
    rules: {
      '@nx/enforce-module-boundaries': [
        'error',
        {
          depConstraints: [{ sourceTag: 'scope:cli', onlyDependOnLibsWithTags: ['scope:sdk', 'scope:shared', 'scope:testing'] }],
        },
      ],
    },
  },
];
