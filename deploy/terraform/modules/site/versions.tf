terraform {
  # terraform_data (builtin provider) needs 1.4; optional() defaults and
  # check blocks need 1.3/1.5. No provider plugins are used.
  required_version = ">= 1.5.0"
}
