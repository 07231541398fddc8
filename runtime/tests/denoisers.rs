//! Parameterisations, guidance, thresholding and the dfdx-module adapter.

use adeis_compiler::{build_plan, Method, Pred, Prediction, SamplerSpec, ScheduleDef};
use adeis_runtime::analytic::GaussianGrads;
use adeis_runtime::analytic::GaussianModel;
use adeis_runtime::mlp::{MlpDenoiser, TimeFeatures};
use adeis_runtime::model_fn::threshold;
use adeis_runtime::noise::normals;
use adeis_runtime::{
    from_f64, sample, to_f64, Cotangents, Denoiser, Guidance, Input, ModelFn, NoParams,
    NoiseSource, RuntimeError, State, Threshold, TimeInfo,
};
use dfdx::prelude::*;

/// The Gaussian model re-expressed as an x0- or v-predicting network.
struct As(GaussianModel, Prediction);

impl Denoiser<f64, Cpu> for As {
    type Grads = GaussianGrads;
    fn prediction(&self) -> Prediction {
        self.1
    }
    fn check_input(&self, item: &[usize]) -> Result<(), RuntimeError> {
        Denoiser::<f64, Cpu>::check_input(&self.0, item)
    }
    fn zero_grads(&self) -> GaussianGrads {
        GaussianGrads::default()
    }
    fn forward(
        &self,
        x: &State<f64, Cpu>,
        z: Option<&State<f64, Cpu>>,
        time: &TimeInfo,
    ) -> State<f64, Cpu> {
        let eps = Denoiser::<f64, Cpu>::forward(&self.0, x, z, time);
        let (a, s) = (time.alpha, time.sigma);
        match self.1 {
            Prediction::Eps => eps,
            Prediction::X0 => (x.clone() - eps * s) * (1.0 / a),
            // v = alpha eps - sigma x0 = (eps - sigma x) / alpha for VP.
            Prediction::V => (eps - x.clone() * s) * (1.0 / a),
            // u = eps - x0 = eps (1 + sigma / alpha) - x / alpha.
            Prediction::Flow => eps * (1.0 + s / a) - x.clone() * (1.0 / a),
        }
    }
    fn vjp(
        &self,
        x: &State<f64, Cpu>,
        z: Option<&State<f64, Cpu>>,
        time: &TimeInfo,
        cot: &State<f64, Cpu>,
        theta: Option<(&mut GaussianGrads, f64)>,
    ) -> Cotangents<f64, Cpu> {
        let (a, s) = (time.alpha, time.sigma);
        let (ce, cx) = match self.1 {
            Prediction::Eps => (1.0, 0.0),
            Prediction::X0 => (-s / a, 1.0 / a),
            Prediction::V => (1.0 / a, -s / a),
            Prediction::Flow => (1.0 + s / a, -1.0 / a),
        };
        let inner = Denoiser::<f64, Cpu>::vjp(&self.0, x, z, time, &(cot.clone() * ce), theta);
        Cotangents {
            x: inner.x + cot.clone() * cx,
            ..inner
        }
    }
}

#[test]
fn every_parameterisation_samples_the_same() {
    let s = ScheduleDef::vp_linear(0.1, 20.0)
        .unwrap()
        .compile()
        .unwrap();
    let dev = Cpu::default();
    let x: State<f64, Cpu> = from_f64(&dev, &normals(1, 0, 6), 2, 3);
    let g = GaussianModel {
        mu: 0.4,
        s2: 0.5,
        dim: 3,
    };
    for method in [Method::Ddim, Method::DpmSolverPp] {
        let plan = build_plan(&s, &SamplerSpec::new(method, 1, 30)).unwrap();
        let run = |m: &As| {
            to_f64(
                &sample(
                    &plan,
                    &ModelFn::new(m),
                    &Input::new(&x, None, &NoiseSource::Seeded(0)),
                    false,
                )
                .unwrap()
                .x,
            )
        };
        let base = run(&As(g.clone(), Prediction::Eps));
        for p in [Prediction::X0, Prediction::V, Prediction::Flow] {
            let other = run(&As(g.clone(), p));
            let e = base
                .iter()
                .zip(&other)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(e < 1e-10, "{method:?} {p:?}: {e}");
        }
    }
}

#[test]
fn the_gaussian_in_every_parameterisation_is_its_eps_converted() {
    let dev = Cpu::default();
    let g = GaussianModel {
        mu: 0.4,
        s2: 0.5,
        dim: 3,
    };
    let x: State<f64, Cpu> = from_f64(&dev, &normals(3, 0, 6), 2, 3);
    let z: State<f64, Cpu> = from_f64(&dev, &normals(4, 0, 6), 2, 3);
    let cot: State<f64, Cpu> = from_f64(&dev, &normals(5, 0, 6), 2, 3);
    let time = TimeInfo {
        t: 0.4,
        model_t: 0.4,
        alpha: 0.8,
        sigma: 0.6,
    };
    for p in [Prediction::X0, Prediction::V, Prediction::Flow] {
        let (native, wrapped) = (g.predicting(p), As(g.clone(), p));
        for z in [None, Some(&z)] {
            let (a, b) = (
                to_f64(&native.forward(&x, z, &time)),
                to_f64(&wrapped.forward(&x, z, &time)),
            );
            let e = a
                .iter()
                .zip(&b)
                .map(|(u, v)| (u - v).abs())
                .fold(0.0, f64::max);
            assert!(e < 1e-14, "{p:?} forward: {e}");
            let (mut ga, mut gb) = (GaussianGrads::default(), GaussianGrads::default());
            let ca = native.vjp(&x, z, &time, &cot, Some((&mut ga, 1.0)));
            let cb = wrapped.vjp(&x, z, &time, &cot, Some((&mut gb, 1.0)));
            let (xa, xb) = (to_f64(&ca.x), to_f64(&cb.x));
            let e = xa
                .iter()
                .zip(&xb)
                .map(|(u, v)| (u - v).abs())
                .fold(0.0, f64::max);
            assert!(e < 1e-14, "{p:?} dx: {e}");
            if z.is_some() {
                let (za, zb) = (to_f64(&ca.cond.unwrap()), to_f64(&cb.cond.unwrap()));
                let e = za
                    .iter()
                    .zip(&zb)
                    .map(|(u, v)| (u - v).abs())
                    .fold(0.0, f64::max);
                assert!(e < 1e-14, "{p:?} dz: {e}");
            }
            assert!(
                (ga.s2 - gb.s2).abs() < 1e-13,
                "{p:?} ds2: {} vs {}",
                ga.s2,
                gb.s2
            );
        }
    }
}

/// Output = the conditioning itself: guidance arithmetic is visible directly.
struct Echo;

impl Denoiser<f64, Cpu> for Echo {
    type Grads = NoParams;
    fn prediction(&self) -> Prediction {
        Prediction::Eps
    }
    fn check_input(&self, _item: &[usize]) -> Result<(), RuntimeError> {
        Ok(())
    }
    fn zero_grads(&self) -> NoParams {
        NoParams
    }
    fn cond_dim(&self) -> usize {
        2
    }
    fn forward(
        &self,
        _x: &State<f64, Cpu>,
        z: Option<&State<f64, Cpu>>,
        _t: &TimeInfo,
    ) -> State<f64, Cpu> {
        z.unwrap().clone()
    }
    fn vjp(
        &self,
        x: &State<f64, Cpu>,
        _z: Option<&State<f64, Cpu>>,
        _t: &TimeInfo,
        cot: &State<f64, Cpu>,
        _theta: Option<(&mut NoParams, f64)>,
    ) -> Cotangents<f64, Cpu> {
        Cotangents {
            x: x.clone() * 0.0,
            cond: Some(cot.clone()),
            time: None,
        }
    }
}

#[test]
fn guidance_and_thresholding() {
    let dev = Cpu::default();
    let x: State<f64, Cpu> = from_f64(&dev, &[0.0; 2], 1, 2);
    let cond: State<f64, Cpu> = from_f64(&dev, &[1.0, 2.0], 1, 2);
    let null: State<f64, Cpu> = from_f64(&dev, &[0.5, -1.0], 1, 2);
    let time = TimeInfo {
        t: 0.5,
        model_t: 0.5,
        alpha: 0.6,
        sigma: 0.8,
    };
    let mut m = ModelFn::new(&Echo);
    m.guidance = Some(Guidance {
        scale: 3.0,
        null_cond: null,
    });
    let out = to_f64(&m.predict(&x, Some(&cond), &time, Pred::Eps));
    assert_eq!(out, vec![0.5 + 3.0 * 0.5, -1.0 + 3.0 * 3.0]);

    let x0: State<f64, Cpu> = from_f64(&dev, &[3.0, -0.5, 0.2, 0.1, 0.4, -0.3], 2, 3);
    let th = to_f64(&threshold(
        &x0,
        Threshold {
            quantile: 0.95,
            max: 2.0,
        },
    ));
    // Row 1: s = min(max(|x| quantile, 1), 2) = 2: clipped to [-2, 2] then / 2.
    assert_eq!(&th[..3], &[1.0, -0.25, 0.1]);
    // Row 2: all |x| < 1: s = 1, unchanged.
    assert_eq!(&th[3..], &[0.1, 0.4, -0.3]);
    // The quantile interpolates between the sorted |x| = 0.2, 0.5, 3 (torch.quantile): at
    // 0.95, position 1.9, s = 0.5 + 0.9 (3 - 0.5) = 2.75 below the cap of 5.
    let th = to_f64(&threshold(
        &x0,
        Threshold {
            quantile: 0.95,
            max: 5.0,
        },
    ));
    let s = 0.5 + 0.9 * 2.5;
    for (got, want) in th[..3].iter().zip([1.0, -0.5 / s, 0.2 / s]) {
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
    }
}

/// The VJP of the thresholded prediction against central differences, in both forms, with the
/// threshold inside its clamp (moving with two interpolated elements), clamped at the cap, and
/// at 1.
#[test]
fn thresholding_is_differentiated_exactly() {
    let dev = Cpu::default();
    let model = GaussianModel {
        mu: 0.3,
        s2: 4.0,
        dim: 7,
    };
    let time = TimeInfo {
        t: 0.3,
        model_t: 0.3,
        alpha: 0.8,
        sigma: 0.6,
    };
    let (b, d) = (3, 7);
    // Row 0 large (s at the cap), row 1 moderate (s interpolated), row 2 small (s = 1).
    let mut xs = normals(11, 0, b * d);
    for (k, v) in xs.iter_mut().enumerate() {
        *v *= [6.0, 1.2, 0.1][k / d];
    }
    let cot = normals(12, 0, b * d);
    let x: State<f64, Cpu> = from_f64(&dev, &xs, b, d);
    let c: State<f64, Cpu> = from_f64(&dev, &cot, b, d);
    let mut m = ModelFn::new(&model);
    m.threshold = Some(Threshold {
        quantile: 0.7,
        max: 3.0,
    });
    // The threshold of each row from the unthresholded prediction (the 0.7 quantile of |x0|,
    // position 4.2 of 7 sorted values).
    let raw = to_f64(&ModelFn::new(&model).predict(&x, None, &time, Pred::Data));
    let s: Vec<f64> = raw
        .chunks(d)
        .map(|r| {
            let mut a: Vec<f64> = r.iter().map(|v| v.abs()).collect();
            a.sort_by(f64::total_cmp);
            a[4] + 0.2 * (a[5] - a[4])
        })
        .collect();
    assert!(
        s[0] > 3.0 && s[1] > 1.0 && s[1] < 3.0 && s[2] < 1.0,
        "{s:?}"
    );
    for want in [Pred::Data, Pred::Eps] {
        let got = to_f64(&m.vjp(&x, None, &time, want, &c, None).x);
        let h = 1e-6;
        for k in 0..b * d {
            let at = |dx: f64| {
                let mut v = xs.clone();
                v[k] += dx;
                let p = to_f64(&m.predict(&from_f64(&dev, &v, b, d), None, &time, want));
                p.iter().zip(&cot).map(|(p, c)| p * c).sum::<f64>()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (got[k] - fd).abs() < 1e-7 * (1.0 + fd.abs()),
                "{want:?} element {k}: vjp {} vs differences {fd}",
                got[k]
            );
        }
    }
}

#[test]
fn a_dfdx_mlp_is_a_denoiser() {
    // [x (3), z (2), 4 frequencies -> 8 features] = 13 -> 16 -> 3
    type Net = (Linear<13, 16>, Tanh, Linear<16, 3>);
    let dev = Cpu::default();
    let net = dev.build_module::<Net, f64>();
    let m = MlpDenoiser::<_, 13, 3>::new(net, 3, 2, TimeFeatures::new(4, 1000.0), Prediction::Eps);
    let s = ScheduleDef::vp_linear(0.1, 20.0)
        .unwrap()
        .compile()
        .unwrap();
    let x: State<f64, Cpu> = from_f64(&dev, &normals(2, 0, 12), 4, 3);
    let z: State<f64, Cpu> = from_f64(&dev, &normals(3, 0, 8), 4, 2);
    let plan = build_plan(&s, &SamplerSpec::new(Method::DpmSolverPp, 2, 10)).unwrap();
    let out = sample(
        &plan,
        &ModelFn::new(&m),
        &Input::new(&x, Some(&z), &NoiseSource::Seeded(0)),
        true,
    )
    .unwrap();
    assert_eq!(out.nfe, 10);
    assert_eq!(out.trajectory.as_ref().unwrap().len(), 11);
    assert!(to_f64(&out.x).iter().all(|v| v.is_finite()));
    // The adapter's input rows are [x, z, sin(w t), cos(w t)].
    let input = m.input(&x, Some(&z), 0.25).as_vec();
    assert_eq!(
        &input[..5],
        &[
            to_f64(&x)[0],
            to_f64(&x)[1],
            to_f64(&x)[2],
            to_f64(&z)[0],
            to_f64(&z)[1]
        ]
    );
    assert!((input[5] - 0.25f64.sin()).abs() < 1e-15 && (input[9] - 0.25f64.cos()).abs() < 1e-15);
    // A conditioning of the wrong width is an error, not a panic.
    let bad: State<f64, Cpu> = from_f64(&dev, &[0.0; 12], 4, 3);
    let e = sample(
        &plan,
        &ModelFn::new(&m),
        &Input::new(&x, Some(&bad), &NoiseSource::Seeded(0)),
        false,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("the conditioning has shape (4, 3); expected (4, 2)"),
        "{e}"
    );
}

#[test]
fn nan_stops_with_the_step_and_time() {
    struct Blowup;
    impl Denoiser<f64, Cpu> for Blowup {
        type Grads = NoParams;
        fn prediction(&self) -> Prediction {
            Prediction::Eps
        }
        fn check_input(&self, _item: &[usize]) -> Result<(), RuntimeError> {
            Ok(())
        }
        fn zero_grads(&self) -> NoParams {
            NoParams
        }
        fn forward(
            &self,
            x: &State<f64, Cpu>,
            _z: Option<&State<f64, Cpu>>,
            t: &TimeInfo,
        ) -> State<f64, Cpu> {
            if t.t < 0.5 {
                x.clone() * f64::NAN
            } else {
                x.clone()
            }
        }
        fn vjp(
            &self,
            _x: &State<f64, Cpu>,
            _z: Option<&State<f64, Cpu>>,
            _t: &TimeInfo,
            cot: &State<f64, Cpu>,
            _theta: Option<(&mut NoParams, f64)>,
        ) -> Cotangents<f64, Cpu> {
            Cotangents {
                x: cot.clone(),
                cond: None,
                time: None,
            }
        }
    }
    let s = ScheduleDef::vp_linear(0.1, 20.0)
        .unwrap()
        .compile()
        .unwrap();
    let dev = Cpu::default();
    let x: State<f64, Cpu> = from_f64(&dev, &[1.0], 1, 1);
    let mut sp = SamplerSpec::new(Method::Ddim, 1, 4);
    sp.grid = adeis_compiler::grid::GridKind::TimeUniform;
    let plan = build_plan(&s, &sp).unwrap();
    let e = sample(
        &plan,
        &ModelFn::new(&Blowup),
        &Input::new(&x, None, &NoiseSource::Seeded(0)),
        false,
    )
    .unwrap_err();
    // Grid 1, 0.75025, 0.5005, 0.25075, 0.001: the first time below 0.5 is step 3.
    assert_eq!(
        e.to_string(),
        "the solver produced NaN or Inf in the model output at step 3 (t = 0.25075000000000003)"
    );
}

/// A model conditioned on a sequence of tokens (as cross-attention is on encoder hidden
/// states): eps = x / 2 + the mean of its tokens [T, D], linear in both, so its VJP is exact.
struct TokenMean {
    tokens: usize,
    dim: usize,
}

impl Denoiser<f64, Cpu> for TokenMean {
    type Grads = NoParams;
    fn prediction(&self) -> Prediction {
        Prediction::Eps
    }
    fn check_input(&self, item: &[usize]) -> Result<(), RuntimeError> {
        adeis_runtime::denoiser::check_vector_input(item, self.dim, "the token-mean model")
    }
    fn cond_dim(&self) -> usize {
        self.tokens * self.dim
    }
    fn cond_shape(&self) -> Vec<usize> {
        vec![self.tokens, self.dim]
    }
    fn forward(
        &self,
        x: &State<f64, Cpu>,
        z: Option<&State<f64, Cpu>>,
        _time: &TimeInfo,
    ) -> State<f64, Cpu> {
        let (xs, zs) = (to_f64(x), to_f64(z.expect("conditioned")));
        let (t, d) = (self.tokens, self.dim);
        let out: Vec<f64> = (0..xs.len())
            .map(|k| {
                let (b, j) = (k / d, k % d);
                let mean: f64 = (0..t).map(|i| zs[(b * t + i) * d + j]).sum::<f64>() / t as f64;
                0.5 * xs[k] + mean
            })
            .collect();
        State::from_f64(&x.device(), &out, &x.shape()).unwrap()
    }
    fn zero_grads(&self) -> NoParams {
        NoParams
    }
    fn vjp(
        &self,
        x: &State<f64, Cpu>,
        z: Option<&State<f64, Cpu>>,
        _time: &TimeInfo,
        cot: &State<f64, Cpu>,
        _theta: Option<(&mut NoParams, f64)>,
    ) -> Cotangents<f64, Cpu> {
        let (c, t, d) = (to_f64(cot), self.tokens, self.dim);
        let dz: Vec<f64> = (0..x.batch() * t * d)
            .map(|k| c[(k / (t * d)) * d + k % d] / t as f64)
            .collect();
        let z = z.expect("conditioned");
        Cotangents {
            x: cot.clone() * 0.5,
            cond: Some(State::from_f64(&x.device(), &dz, &z.shape()).unwrap()),
            time: None,
        }
    }
}

/// Conditioning with a shape: z of items [tokens, dim] passes the shape check, its gradient
/// dz keeps that shape and equals central differences of the loss; a z flattened to
/// [batch, tokens * dim] is refused with both shapes named.
#[test]
fn sequence_conditioning_keeps_its_shape() {
    use adeis_compiler::{Problem, Wrt};
    let dev = Cpu::default();
    let (batch, tokens, dim) = (2, 3, 4);
    let m = TokenMean { tokens, dim };
    let schedule = ScheduleDef::vp_linear(0.1, 20.0)
        .unwrap()
        .compile()
        .unwrap();
    let problem = Problem::new(schedule, &SamplerSpec::new(Method::DpmSolverPp, 2, 6))
        .unwrap()
        .with_wrt(Wrt::ALL);
    let x: State<f64, Cpu> =
        State::from_f64(&dev, &normals(1, 1, batch * dim), &[batch, dim]).unwrap();
    let zv = normals(2, 1, batch * tokens * dim);
    let z: State<f64, Cpu> = State::from_f64(&dev, &zv, &[batch, tokens, dim]).unwrap();
    let target = normals(3, 1, batch * dim);
    // L = sum((x0 - target)^2) / 2.
    let loss = |z: &State<f64, Cpu>| {
        let out = sample(
            problem.plan(),
            &ModelFn::new(&m),
            &Input::new(&x, Some(z), &NoiseSource::Seeded(0)),
            false,
        )
        .unwrap();
        let x0 = to_f64(&out.x);
        x0.iter()
            .zip(&target)
            .map(|(a, b)| 0.5 * (a - b).powi(2))
            .sum::<f64>()
    };
    let g = adeis_runtime::gradient(
        &problem,
        &ModelFn::new(&m),
        &Input::new(&x, Some(&z), &NoiseSource::Seeded(0)),
        |x0| {
            let r: Vec<f64> = to_f64(x0).iter().zip(&target).map(|(a, b)| a - b).collect();
            Ok(State::from_f64(&dev, &r, &x0.shape()).unwrap())
        },
    )
    .unwrap();
    let dz = g.dz.expect("wrt cond");
    assert_eq!(dz.shape(), vec![batch, tokens, dim]);
    let h = 1e-5;
    for (k, analytic) in to_f64(&dz).into_iter().enumerate() {
        let at = |d: f64| {
            let mut v = zv.clone();
            v[k] += d;
            loss(&State::from_f64(&dev, &v, &[batch, tokens, dim]).unwrap())
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            (fd - analytic).abs() < 1e-7 * (1.0 + fd.abs()),
            "dz[{k}]: {analytic} vs {fd}"
        );
    }
    let flat: State<f64, Cpu> = from_f64(&dev, &zv, batch, tokens * dim);
    let e = sample(
        problem.plan(),
        &ModelFn::new(&m),
        &Input::new(&x, Some(&flat), &NoiseSource::Seeded(0)),
        false,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("the conditioning has shape (2, 12); expected (2, 3, 4)"),
        "{e}"
    );
}
