// class-transformer keeps its metadata in one storage object that it does not
// export from its entry point; class-validator-jsonschema needs it to follow
// `@Type(() => Dto)` to nested DTOs. Same file, same instance as the entry
// point's (`main` is cjs/index.js).
declare module 'class-transformer/cjs/storage.js' {
  export { defaultMetadataStorage } from 'class-transformer/types/storage.js';
}
