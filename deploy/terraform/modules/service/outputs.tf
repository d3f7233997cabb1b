output "instances" {
  description = "Per instance: host, unit or supervisor script, log."
  value = { for n, i in local.inst : n => {
    host    = i.host
    dir     = i.dir
    service = var.process_manager == "systemd" ? "${i.unit}.service" : "${i.dir}/start.sh (pid file ${i.pid_file})"
    log     = var.process_manager == "systemd" ? "journalctl -u ${i.unit}" : i.log_file
  } }
  depends_on = [terraform_data.config]
}

output "cloud_init" {
  description = "#cloud-config per instance with the same files and unit."
  sensitive   = true
  value = { for n, i in local.inst : n => templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    what        = var.kind
    name        = n
    dir         = i.dir
    data_dir    = i.data_dir
    env_file    = i.env_file
    env         = try(var.files[n][i.env_file].content, "")
    unit        = i.unit
    unit_file   = local.unit_file[n]
    user        = var.service_user
    binary      = var.kind
    binary_url  = lookup(var.binary_url_template, n, null)
    extra_files = [for p, f in lookup(var.files, n, {}) : { path = p, mode = f.mode, content = f.content } if p != i.env_file]
  }) }
}
