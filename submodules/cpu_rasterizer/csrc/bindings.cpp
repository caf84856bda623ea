// Python bindings of the CPU rasterizer. The autograd wiring lives in internal/rasterize/native.py;
// these are plain functions on contiguous float32 CPU tensors. The GIL is released while they run.
#include <torch/extension.h>

#include <string>
#include <vector>

namespace cpu_rasterizer {
std::vector<at::Tensor> composite_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t);
std::vector<at::Tensor> composite_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t,
                                           const std::vector<at::Tensor>&, const at::Tensor&, const at::Tensor&);
std::vector<at::Tensor> project_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const at::Tensor&, int64_t, int64_t, double, double, int64_t);
std::vector<at::Tensor> project_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, int64_t, int64_t, double, double, int64_t,
                                         const at::Tensor&, const at::Tensor&, const at::Tensor&);
at::Tensor sh_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, const at::Tensor&);
std::vector<at::Tensor> sh_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, const at::Tensor&,
                                    const at::Tensor&);
std::vector<at::Tensor> l1_ssim_loss(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                     double, double, bool);
}  // namespace cpu_rasterizer

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace cr = cpu_rasterizer;
  using release = pybind11::call_guard<pybind11::gil_scoped_release>;
  m.doc() = "C++/OpenMP CPU rasterizer for 3D Gaussian Splatting (see docs/rasterizer.md)";
  m.def("composite_forward", &cr::composite_forward, release(),
        "(means2d, conics, features, opacities, depths, radii, width, height, tile_size) -> "
        "[render, alpha, last, t_final, per-camera binning...]");
  m.def("composite_backward", &cr::composite_backward, release(),
        "(means2d, conics, features, opacities, depths, radii, width, height, tile_size, state, g_render, g_alpha) "
        "-> [g_means2d, g_conics, g_features, g_opacities]");
  m.def("project_forward", &cr::project_forward, release(),
        "(means, quats, scales, viewmats, Ks, width, height, near, far, tile_size) -> [means2d, conics, depths, radii]");
  m.def("project_backward", &cr::project_backward, release(),
        "(means, quats, scales, viewmats, Ks, width, height, near, far, tile_size, g_means2d, g_conics, g_depths) "
        "-> [g_means, g_quats, g_scales]");
  m.def("sh_forward", &cr::sh_forward, release(), "(means, sh0, shN, degree, viewmats) -> colors (C,N,3)");
  m.def("sh_backward", &cr::sh_backward, release(),
        "(means, sh0, shN, degree, viewmats, g_colors) -> [g_means, g_sh0, g_shN]");
  m.def("l1_ssim_loss", &cr::l1_ssim_loss, release(),
        "(pred, gt, mask, window, c1, c2, lam, need_grad) -> [loss, l1, ssim, grad]: (1-lam) L1 + lam (1-SSIM) of "
        "(H,W,C) images and its gradient to pred (csrc/loss.cpp)");
  m.def("num_threads", []() { return at::get_num_threads(); }, "threads the kernels use (torch.get_num_threads())");
  // What this CPU (and its operating system: AVX and AVX-512 need the OS to save their registers) can
  // run, as x86-64 micro-architecture levels. cpu_rasterizer asks the baseline module, which runs
  // everywhere, before it imports a module compiled for a higher level.
  m.def("cpu_levels", []() {
    std::vector<std::string> levels;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    levels.push_back("x86-64");
    if (__builtin_cpu_supports("x86-64-v2")) levels.push_back("x86-64-v2");
    if (__builtin_cpu_supports("x86-64-v3")) levels.push_back("x86-64-v3");
    if (__builtin_cpu_supports("x86-64-v4")) levels.push_back("x86-64-v4");
#endif
    return levels;
  }, "x86-64 micro-architecture levels this CPU supports (empty on other architectures)");
}
