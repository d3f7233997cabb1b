terraform {
  # Only terraform's builtin provider (terraform_data): nothing to download.
  required_version = ">= 1.5.0"
}
