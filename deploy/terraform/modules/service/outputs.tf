output "instances" {
  description = "Per instance: host, how it is supervised, where it logs. Known once every instance answered its health check."
  value = { for n, i in local.inst : n => {
    host    = i.host
    dir     = i.dir
    service = var.process_manager == "systemd" ? "${i.unit}.service" : "${i.dir}/start.sh, ${i.dir}/stop.sh (supervisor pid in ${i.pid_file})"
    log     = var.process_manager == "systemd" ? "journalctl -u ${i.unit}" : i.log_file
  } }
  depends_on = [terraform_data.config]
}

output "cloud_init" {
  description = "Per instance, a #cloud-config that writes the same env file, config files and systemd unit and starts the service, for VMs created outside Terraform. The binary is downloaded from binary_url when set, else it must already be at <dir>/bin/<kind>. Sensitive: it holds the env file."
  sensitive   = true
  value = { for n, i in local.inst : n => join("\n", ["#cloud-config", yamlencode({
    write_files = [for f in concat(
      [{ path = "${i.dir}/health.sh", mode = "0755", content = local.scripts[n].health_systemd }],
      [{ path = "/etc/systemd/system/${i.unit}.service", mode = "0644", content = local.scripts[n].unit }],
      local.config_files[n],
      ) : {
      path        = f.path
      permissions = f.mode
      content     = f.content
    }]
    runcmd = concat(
      [
        ["sh", "-c", "id -u ${var.service_user} >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin ${var.service_user}"],
        ["mkdir", "-p", "${i.dir}/bin", i.data_dir],
        ["chmod", "0700", i.data_dir],
        ["chown", var.service_user, i.data_dir],
      ],
      [for p, f in try(var.files[n], {}) : ["chown", var.service_user, p]],
      i.binary_url == null ? [] : [
        ["sh", "-c", "curl -fsSL -o '${i.bin}.new' '${i.binary_url}' && chmod 0755 '${i.bin}.new' && mv -f '${i.bin}.new' '${i.bin}'"],
      ],
      [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "${i.unit}.service"],
        ["${i.dir}/health.sh"],
      ],
    )
  })]) }
}
