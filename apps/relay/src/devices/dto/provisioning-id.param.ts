import { IsUUID } from 'class-validator';

/** `:id` of `/v1/provisioning/:id` routes. */
export class ProvisioningIdParam {
  @IsUUID()
  id!: string;
}
