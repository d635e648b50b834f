//! The HTTP service.
pub fn serve_blocking(_args: crate::config::ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("the HTTP service is not built yet")
}
